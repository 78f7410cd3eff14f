// /console/orders: the account's orders from /api/v1/orders, newest first as the API gives them, a page at a time.
"use strict";

(() => {
  const { api, el, formatMoney, formatDate, showMessage } = Console;
  const body = document.querySelector("#orders-table tbody");

  function row(order) {
    const invoice = order.payment_status === "paid" && order.invoice_id
      ? el("a", { href: `/api/v1/invoices/${encodeURIComponent(order.invoice_id)}.pdf`, download: `invoice-${order.invoice_id}.pdf`,
        "aria-label": `Download invoice ${order.invoice_id} (PDF)` }, `${order.invoice_id} PDF`)
      : el("span", { class: "hint" }, "—");
    return el("tr", { "data-order-id": order.order_id },
      el("td", { class: "nowrap" }, order.billing_date ? formatDate(order.billing_date) : el("span", { class: "hint" }, "not paid yet")),
      el("td", { class: "span", "data-label": "Order" }, el("code", {}, order.order_id)),
      el("td", { class: "hide-narrow" }, order.description),
      el("td", { class: "num", "data-value": order.cost }, formatMoney(order.cost, order.currency)),
      el("td", { class: "hide-narrow" }, order.payment_method),
      el("td", {}, el("span", { class: `badge ${order.payment_status}` }, order.payment_status)),
      el("td", { class: "nowrap" }, invoice));
  }

  // A page at a time: "Load more orders" follows the API's next link and adds the page below.
  const more = document.getElementById("more-orders");
  let next = null;

  function load(path, first) {
    more.disabled = true;
    return api(path).then((data) => {
      const rows = data.orders.map(row);
      if (first) {
        body.replaceChildren(...(rows.length ? rows
          : [el("tr", {}, el("td", { colspan: 7, class: "empty" }, "No orders yet: add funds to an app on Plan & usage."))]));
      } else {
        body.append(...rows);
      }
      next = data.next;
      more.hidden = !next;
      more.disabled = false;
      document.body.dataset.loaded = String(Number(document.body.dataset.loaded || 0) + 1);
    }).catch((error) => {
      more.disabled = false;
      if (error.status !== 401) showMessage(document.getElementById("message"), error.message);
    });
  }

  more.addEventListener("click", () => { if (next) load(next, false); });
  load("/api/v1/orders", true);
})();
