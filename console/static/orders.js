// /console/orders: the account's orders from /api/v1/orders, newest first as the API gives them.
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

  api("/api/v1/orders").then((data) => {
    body.replaceChildren(...(data.orders.length ? data.orders.map(row)
      : [el("tr", {}, el("td", { colspan: 7, class: "empty" }, "No orders yet: add funds to an app on Plan & usage."))]));
    document.body.dataset.loaded = "1";
  }).catch((error) => { if (error.status !== 401) showMessage(document.getElementById("message"), error.message); });
})();
