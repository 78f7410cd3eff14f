// /console/plans: every app of the account from /api/v1/apps; Manage (shown on hover and on
// keyboard focus) and the row's … menu post the spec's actions and show what they created.
"use strict";

(() => {
  const { api, el, formatInteger, formatMoney, formatDate, minorUnits, showMessage } = Console;
  // the page's data is a JSON block, not a script: the CSP runs no inline script
  const page = JSON.parse(document.getElementById("page-data")?.textContent || '{"plans": [], "enterprise": false}');
  const body = document.querySelector("#apps-table tbody");
  const message = document.getElementById("message");
  const manage = document.getElementById("manage");
  const ownerDialog = document.getElementById("owner-dialog");
  let apps = [];
  let current = null; // the app being managed
  let opener = null; // the control that opened a dialog, focused again when it closes

  // -- notices -----------------------------------------------------------------------------
  // The API words each notice (``message``); the page adds a title per type and reads dates for people.
  const NOTICE_TITLES = {
    plan_expired: "Plan expired",
    plan_expiring: "Plan expiring",
    balance_depleted: "Balance used up",
    balance_low: "Low balance",
    scheduled_downgrade: "Scheduled downgrade",
    scheduled_change: "Scheduled plan change",
    extension_pending: "Extension requested",
  };
  const BAD = new Set(["plan_expired", "balance_depleted"]);
  function noticeItem(notice) {
    const message = notice.date ? notice.message.replace(notice.date, formatDate(notice.date)) : notice.message;
    return el("li", { "data-notice": notice.type }, el("strong", {}, NOTICE_TITLES[notice.type] ?? notice.type), " — ", message);
  }
  function noticeTone(notices) {
    if (notices.some((n) => BAD.has(n.type))) return "bad";
    return notices.length ? "warn" : "";
  }

  // Popovers and menus are fixed to the viewport under their button, so a scrolling table never clips them.
  function place(floating, anchor) {
    const rect = anchor.getBoundingClientRect();
    const width = floating.offsetWidth;
    const left = Math.max(8, Math.min(rect.right - width, window.innerWidth - width - 8));
    const below = rect.bottom + 6 + floating.offsetHeight <= window.innerHeight;
    floating.style.left = `${left}px`;
    floating.style.top = `${below ? rect.bottom + 6 : Math.max(8, rect.top - 6 - floating.offsetHeight)}px`;
  }
  window.addEventListener("scroll", () => {
    for (const open of document.querySelectorAll(".popover:not([hidden]), [role=menu]:not([hidden])")) open.hidden = true;
  }, { passive: true });

  function infoIcon(app) {
    const id = `notices-${app.app_id}`;
    const popover = el("div", { class: "popover", id, role: "tooltip", hidden: true },
      app.notices.length ? el("ul", {}, app.notices.map(noticeItem)) : "No notices.");
    const button = el("button", {
      type: "button", class: `info-button ${noticeTone(app.notices)}`, "aria-describedby": id,
      "aria-label": `Notices for ${app.app_id} (${app.notices.length})`, "aria-expanded": "false",
    }, "i");
    const wrap = el("span", { class: "info" }, button, popover);
    const show = (open) => {
      popover.hidden = !open;
      button.setAttribute("aria-expanded", String(open));
      if (open) place(popover, button);
    };
    button.addEventListener("click", () => show(popover.hidden));
    button.addEventListener("focus", () => show(true));
    button.addEventListener("blur", () => show(false));
    wrap.addEventListener("mouseenter", () => show(true));
    wrap.addEventListener("mouseleave", () => { if (document.activeElement !== button) show(false); });
    button.addEventListener("keydown", (e) => { if (e.key === "Escape") show(false); });
    return wrap;
  }

  function moreMenu(app) {
    const menuId = `menu-${app.app_id}`;
    const item = el("button", { type: "button", role: "menuitem", tabindex: "-1" }, "Change owner");
    const menu = el("div", { role: "menu", id: menuId, hidden: true, "aria-label": `Actions for ${app.app_id}` }, item);
    const button = el("button", {
      type: "button", "aria-haspopup": "menu", "aria-expanded": "false", "aria-controls": menuId,
      "aria-describedby": `app-${app.app_id}`, title: `More actions for ${app.app_id}`,
    }, "…");
    const close = () => { menu.hidden = true; button.setAttribute("aria-expanded", "false"); };
    button.addEventListener("click", () => {
      const open = menu.hidden;
      menu.hidden = !open;
      button.setAttribute("aria-expanded", String(open));
      if (open) { place(menu, button); item.focus(); }
    });
    item.addEventListener("click", () => { close(); openOwner(app, button); });
    menu.addEventListener("keydown", (e) => { if (e.key === "Escape") { close(); button.focus(); } });
    menu.addEventListener("focusout", (e) => { if (!menu.contains(e.relatedTarget) && e.relatedTarget !== button) close(); });
    return el("span", { class: "menu" }, button, menu);
  }

  function row(app) {
    const manageButton = el("button", { type: "button", class: "manage", "aria-describedby": `app-${app.app_id}` }, "Manage");
    manageButton.addEventListener("click", () => openManage(app, manageButton));
    return el("tr", { "data-app-id": app.app_id },
      el("th", { scope: "row", id: `app-${app.app_id}` }, app.app_id),
      el("td", { class: "hide-narrow owner-cell", "data-field": "owner" }, app.owner || "—"),
      el("td", { "data-field": "plan", "data-label": "Plan" }, app.plan || "—"),
      el("td", { "data-field": "status" }, el("span", { class: `badge ${app.status}` }, app.status)),
      el("td", { class: "num", "data-field": "balance", "data-value": app.balance ?? "", "data-label": "Balance" }, formatMoney(app.balance, app.currency)),
      el("td", { class: "num hide-narrow", "data-value": sessionsOf(app) }, formatInteger(sessionsOf(app))),
      el("td", { class: "num hide-narrow", "data-value": costOf(app) ?? "" }, formatMoney(costOf(app), app.currency)),
      el("td", { class: "hide-narrow nowrap" }, app.expires_at ? formatDate(app.expires_at) : "—"),
      el("td", { class: "span" }, el("div", { class: "row-actions" }, infoIcon(app), manageButton, moreMenu(app))));
  }
  // This billing period's (UTC month's) figures.
  const sessionsOf = (app) => app.billing_sessions ?? 0;
  const costOf = (app) => app.cost ?? null;

  async function refresh() {
    const data = await api("/api/v1/apps");
    apps = data.apps;
    body.replaceChildren(...(apps.length ? apps.map(row)
      : [el("tr", {}, el("td", { colspan: 9, class: "empty" }, "No apps yet."))]));
    document.body.dataset.loaded = String(Number(document.body.dataset.loaded || 0) + 1);
    return apps;
  }

  // After an action the balance processor applies it within seconds: show it when it lands.
  async function refreshUntil(changed, seconds = 60) {
    const deadline = Date.now() + seconds * 1000;
    while (Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 1500));
      const fresh = await refresh();
      if (changed(fresh)) return;
    }
  }

  // -- dialogs -----------------------------------------------------------------------------
  function openManage(app, from) {
    current = app;
    opener = from;
    document.getElementById("manage-title").textContent = `Manage ${app.app_id}`;
    document.getElementById("manage-summary").textContent =
      `Plan ${app.plan || "none yet"} · balance ${formatMoney(app.balance, app.currency)} · status ${app.status}`;
    const select = document.getElementById("plan-select");
    if (select) {
      select.replaceChildren(...page.plans.map((p) => el("option", { value: p.name, selected: p.name === app.plan },
        `${p.name}${p.description ? ` — ${p.description}` : ""}`)));
    }
    const amount = document.getElementById("amount");
    if (amount) { // as many decimals as the app's currency has (JPY none, KWD three)
      const digits = minorUnits(app.currency || "USD");
      amount.pattern = digits ? `[0-9]+([.][0-9]{1,${digits}})?` : "[0-9]+";
      amount.placeholder = digits ? `100.${"0".repeat(digits)}` : "100";
    }
    for (const result of manage.querySelectorAll(".result")) result.replaceChildren();
    manage.showModal();
  }
  function openOwner(app, from) {
    current = app;
    opener = from;
    document.getElementById("owner-title").textContent = `Change owner of ${app.app_id}`;
    document.getElementById("owner-user").value = "";
    document.getElementById("owner-result").replaceChildren();
    ownerDialog.showModal();
  }
  for (const dialog of [manage, ownerDialog]) {
    dialog.addEventListener("close", () => opener?.focus());
  }
  document.getElementById("manage-close").addEventListener("click", () => manage.close());
  document.getElementById("owner-close").addEventListener("click", () => ownerDialog.close());

  // Each form posts once per submission; a retry of the same submission reuses its key.
  function action(formId, resultId, send) {
    const form = document.getElementById(formId);
    if (!form) return;
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const result = document.getElementById(resultId);
      const button = form.querySelector("[type=submit]");
      button.disabled = true;
      try {
        await send(new FormData(form), result, crypto.randomUUID());
      } catch (error) {
        if (error.status !== 401) showMessage(result, error.message);
      } finally {
        button.disabled = false;
      }
    });
  }

  action("plan-form", "plan-result", async (data, result, key) => {
    const app = current;
    const answer = await api(`/api/v1/apps/${encodeURIComponent(app.app_id)}/plan`, { method: "POST", body: { plan: data.get("plan") }, idempotencyKey: key });
    const when = answer.effective_at ? ` from ${formatDate(answer.effective_at)}` : "";
    showMessage(result, `Plan ${data.get("plan")} requested${when}.`, "ok");
    refreshUntil((fresh) => fresh.some((a) => a.app_id === app.app_id && (a.plan === data.get("plan") || a.notices.length !== app.notices.length)));
  });

  action("funds-form", "funds-result", async (data, result, key) => {
    const app = current;
    const amount = String(data.get("amount")).trim();
    const answer = await api(`/api/v1/apps/${encodeURIComponent(app.app_id)}/funds`, {
      method: "POST", body: { amount, currency: app.currency || "USD", payment_method: data.get("payment_method") }, idempotencyKey: key,
    });
    result.replaceChildren();
    result.hidden = false;
    result.className = "result message ok";
    result.setAttribute("role", "status");
    result.append(
      "Order ", el("code", { "data-order-id": answer.order_id }, answer.order_id), " created: ",
      formatMoney(answer.cost ?? answer.amount ?? amount, answer.currency ?? app.currency), " by ", answer.payment_method ?? data.get("payment_method"),
      answer.payment_status ? ` (${answer.payment_status})` : "", ". The balance rises once the payment is confirmed. ",
      el("a", { href: "/console/orders" }, "See Orders & invoices"));
    const before = Number(app.balance ?? 0);
    refreshUntil((fresh) => fresh.some((a) => a.app_id === app.app_id && Number(a.balance ?? 0) !== before));
  });

  action("extension-form", "extension-result", async (data, result, key) => {
    const app = current;
    await api(`/api/v1/apps/${encodeURIComponent(app.app_id)}/extension-requests`, {
      method: "POST", body: { days: Number(data.get("days")), reason: String(data.get("reason") || "") }, idempotencyKey: key,
    });
    showMessage(result, `Extension of ${data.get("days")} days requested: an operator grants or declines it.`, "ok");
    refreshUntil((fresh) => fresh.some((a) => a.app_id === app.app_id && a.notices.length !== app.notices.length));
  });

  action("owner-form", "owner-result", async (data, result, key) => {
    const app = current;
    const owner = String(data.get("user_id")).trim();
    await api(`/api/v1/apps/${encodeURIComponent(app.app_id)}/owner`, { method: "POST", body: { user_id: owner }, idempotencyKey: key });
    showMessage(result, `Owner change to ${owner} requested.`, "ok");
    refreshUntil((fresh) => fresh.some((a) => a.app_id === app.app_id && a.owner === owner));
  });

  refresh().catch((error) => { if (error.status !== 401) showMessage(message, error.message); });
})();
