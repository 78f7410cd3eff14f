// What every console page shares: calls to the console API with the session cookie (and its
// CSRF token on POST), the return to /login when the session expired, and number formatting.
"use strict";

const Console = (() => {
  const locale = document.documentElement.lang || "en";
  const csrf = document.querySelector('meta[name="csrf-token"]')?.content || "";
  const integer = new Intl.NumberFormat(locale, { maximumFractionDigits: 0 });

  class ApiError extends Error {
    constructor(status, body) {
      super((body && body.error) || `The console answered ${status}`);
      this.status = status;
      this.body = body;
    }
  }

  function toLogin() {
    const next = encodeURIComponent(location.pathname + location.search);
    location.assign(`/login?expired=1&next=${next}`);
  }

  async function api(path, { method = "GET", body, idempotencyKey } = {}) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (method !== "GET") {
      headers["X-CSRF-Token"] = csrf;
      headers["Idempotency-Key"] = idempotencyKey || crypto.randomUUID();
    }
    const response = await fetch(path, {
      method, headers, credentials: "same-origin", body: body === undefined ? undefined : JSON.stringify(body),
    });
    let data = null;
    try { data = await response.json(); } catch { data = null; }
    if (response.status === 401) { toLogin(); throw new ApiError(401, data); }
    if (!response.ok) throw new ApiError(response.status, data);
    return data;
  }

  function formatInteger(n) { return integer.format(n); }

  // Amounts with the currency's own minor units (JPY 0, USD 2, KWD 3), and never rounded: a fraction of a
  // minor unit the API reports (a balance after sessions priced at 0.005) keeps its digits.
  function minorUnits(currency) {
    try {
      return new Intl.NumberFormat(locale, { style: "currency", currency }).resolvedOptions().maximumFractionDigits;
    } catch {
      return 2;
    }
  }

  function formatMoney(amount, currency) {
    if (amount === null || amount === undefined || amount === "") return "—";
    const value = Number(amount);
    try {
      const minimum = minorUnits(currency);
      return new Intl.NumberFormat(locale, {
        style: "currency", currency, minimumFractionDigits: minimum, maximumFractionDigits: Math.max(minimum, 6),
      }).format(value);
    } catch {
      return `${amount} ${currency}`;
    }
  }

  function formatDate(iso) {
    if (!iso) return "—";
    const day = /^\d{4}-\d{2}-\d{2}$/.test(iso);
    const d = new Date(day ? `${iso}T00:00:00Z` : iso);
    return new Intl.DateTimeFormat(locale, { year: "numeric", month: "short", day: "numeric", timeZone: "UTC" }).format(d);
  }

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else if (key === "style") Object.assign(node.style, value); // CSSOM: the CSP allows no style attribute
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function showMessage(box, text, kind = "error") {
    box.replaceChildren();
    if (!text) { box.hidden = true; return; }
    box.hidden = false;
    box.className = `message ${kind}`;
    box.setAttribute("role", kind === "error" ? "alert" : "status");
    box.textContent = text;
  }

  return { api, ApiError, el, formatInteger, formatMoney, minorUnits, formatDate, showMessage, toLogin };
})();
