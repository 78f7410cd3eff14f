// /console/usage: the filters live in the page's query string (a view can be bookmarked and
// shared); every change asks /api/v1/usage once and draws the graph and the table from the same
// answer, so they never disagree.
"use strict";

(() => {
  const { api, el, formatInteger, showMessage } = Console;
  const METRICS = ["billing_sessions", "usage_sessions", "voice_sessions", "alert_sessions", "agents", "active_agents"];
  const DEFAULT_BY = { "24h": "hour", "7d": "day", "30d": "day", "3m": "week", custom: "day" };
  const ALLOWED_BY = { "24h": ["hour"], "7d": ["day", "week", "month"], "30d": ["day", "week", "month"], "3m": ["day", "week", "month"], custom: ["day", "week", "month"] };
  const css = getComputedStyle(document.documentElement);
  const color = (name) => css.getPropertyValue(name).trim();

  const form = document.getElementById("filters");
  form.addEventListener("submit", (event) => event.preventDefault()); // the controls apply at once
  const appSelect = document.getElementById("app");
  const rangeButtons = [...form.querySelectorAll("[data-range]")];
  const customBox = document.getElementById("custom-dates");
  const fromInput = document.getElementById("from");
  const toInput = document.getElementById("to");
  const bySelect = document.getElementById("granularity");
  const zoneSelect = document.getElementById("timezone");
  const graphButton = document.getElementById("show-graph");
  const tableButton = document.getElementById("show-table");
  const graphView = document.getElementById("graph-view");
  const tableView = document.getElementById("table-view");
  const tooltip = document.getElementById("chart-tooltip");
  const message = document.getElementById("message");
  const canvas = document.getElementById("chart");

  const params = new URLSearchParams(location.search);
  const state = {
    app: params.get("app") || "",
    range: params.get("from") && params.get("to") ? "custom" : params.get("range") || "30d",
    from: params.get("from") || "",
    to: params.get("to") || "",
    by: params.get("by") || "",
    timezone: params.get("timezone") || "UTC",
    view: params.get("view") === "table" ? "table" : "graph",
  };
  if (!DEFAULT_BY[state.range]) state.range = "30d";
  if (!ALLOWED_BY[state.range].includes(state.by)) state.by = DEFAULT_BY[state.range];

  let chart = null;
  let series = [];
  let by = "day";
  let request = 0;

  // -- labels ------------------------------------------------------------------------------
  const dayFormat = new Intl.DateTimeFormat("en", { year: "numeric", month: "short", day: "numeric", timeZone: "UTC" });
  const shortDay = new Intl.DateTimeFormat("en", { month: "short", day: "numeric", timeZone: "UTC" });
  const monthFormat = new Intl.DateTimeFormat("en", { year: "numeric", month: "long", timeZone: "UTC" });
  const asUtcDay = (period) => new Date(`${period.slice(0, 10)}T00:00:00Z`);

  // The period as a person reads it; hours keep the zone's own clock time from the API's offset.
  function periodLabel(period, long) {
    if (by === "hour") {
      const time = period.slice(11, 16);
      return long ? `${dayFormat.format(asUtcDay(period))}, ${time} (UTC${period.slice(19) === "Z" ? "" : period.slice(19)})` : time;
    }
    if (by === "month") return monthFormat.format(asUtcDay(period));
    if (by === "week") return `${long ? "Week of " : ""}${(long ? dayFormat : shortDay).format(asUtcDay(period))}`;
    return (long ? dayFormat : shortDay).format(asUtcDay(period));
  }

  // -- filters ---------------------------------------------------------------------------------
  function syncControls() {
    appSelect.value = state.app;
    for (const button of rangeButtons) button.setAttribute("aria-pressed", String(button.dataset.range === state.range));
    customBox.hidden = state.range !== "custom";
    fromInput.value = state.from;
    toInput.value = state.to;
    for (const option of bySelect.options) option.disabled = !ALLOWED_BY[state.range].includes(option.value);
    bySelect.value = state.by;
    if (![...zoneSelect.options].some((o) => o.value === state.timezone)) zoneSelect.append(el("option", { value: state.timezone }, state.timezone));
    zoneSelect.value = state.timezone;
    graphButton.setAttribute("aria-pressed", String(state.view === "graph"));
    tableButton.setAttribute("aria-pressed", String(state.view === "table"));
    graphView.hidden = state.view !== "graph";
    tableView.hidden = state.view !== "table";
  }

  function query() {
    const q = new URLSearchParams();
    if (state.app) q.set("app", state.app);
    if (state.range === "custom") { q.set("from", state.from); q.set("to", state.to); } else q.set("range", state.range);
    q.set("by", state.by);
    q.set("timezone", state.timezone);
    return q;
  }

  function remember() {
    const q = query();
    if (state.view === "table") q.set("view", "table");
    history.replaceState(null, "", `${location.pathname}?${q}`);
  }

  rangeButtons.forEach((button) => button.addEventListener("click", () => {
    state.range = button.dataset.range;
    state.by = DEFAULT_BY[state.range];
    if (state.range === "custom") {
      syncControls();
      if (!state.from || !state.to) { fromInput.focus(); return; }
    }
    load();
  }));
  document.getElementById("apply-custom").addEventListener("click", () => {
    state.from = fromInput.value;
    state.to = toInput.value;
    if (!state.from || !state.to) { showMessage(message, "Choose both dates, From and To, then Apply."); return; }
    load();
  });
  appSelect.addEventListener("change", () => { state.app = appSelect.value; load(); });
  bySelect.addEventListener("change", () => { state.by = bySelect.value; load(); });
  zoneSelect.addEventListener("change", () => { state.timezone = zoneSelect.value; load(); });
  graphButton.addEventListener("click", () => { state.view = "graph"; syncControls(); remember(); chart?.resize(); });
  tableButton.addEventListener("click", () => { state.view = "table"; hideTooltip(); syncControls(); remember(); });

  // -- data --------------------------------------------------------------------------------
  async function load() {
    syncControls();
    remember();
    const mine = ++request;
    document.body.setAttribute("aria-busy", "true");
    try {
      const data = await api(`/api/v1/usage?${query()}`);
      if (mine !== request) return;
      showMessage(message, "");
      render(data);
    } catch (error) {
      if (mine === request && error.status !== 401) showMessage(message, error.message);
    } finally {
      if (mine === request) document.body.removeAttribute("aria-busy");
    }
  }

  function render(data) {
    series = data.series;
    by = data.range.by;
    state.by = by;
    const range = data.range;
    const first = String(range.from).slice(0, 10);
    const last = String(range.to).slice(0, 10);
    document.getElementById("range-label").textContent =
      `${data.app ? data.app : "All apps"} · ${dayFormat.format(asUtcDay(first))} – ${dayFormat.format(asUtcDay(last))} · by ${by} · ${range.timezone}`;
    for (const dd of document.querySelectorAll("[data-total]")) {
      const value = data.totals[dd.dataset.total];
      dd.textContent = formatInteger(value);
      dd.dataset.value = value;
    }
    const csv = query();
    document.getElementById("export-csv").href = `/api/v1/usage.csv?${csv}`;
    const sessions = new URLSearchParams({ from: first, to: last, timezone: range.timezone });
    if (state.app) sessions.set("app", state.app);
    document.getElementById("export-sessions").href = `/api/v1/sessions.csv?${sessions}`;
    renderTable(data);
    renderChart();
    document.body.dataset.loaded = `${request}`;
  }

  function numberCell(value) {
    return el("td", { class: "num", "data-value": value }, formatInteger(value));
  }

  function renderTable(data) {
    const body = document.querySelector("#usage-table tbody");
    body.replaceChildren(...series.map((point) => el("tr", {},
      el("th", { scope: "row", "data-value": point.period }, periodLabel(point.period, true)),
      ...METRICS.map((m) => numberCell(point[m])))));
    document.querySelector("#usage-table tfoot").replaceChildren(el("tr", {},
      el("td", {}, "Total"), ...METRICS.map((m) => numberCell(data.totals[m]))));
    document.getElementById("table-caption").textContent =
      `${series.length} ${by === "hour" ? "hours" : `${by}s`}; totals: sums, Agents the highest, Active agents distinct over the range`;
  }

  // -- graph -------------------------------------------------------------------------------
  function renderChart() {
    const labels = series.map((p) => periodLabel(p.period, false));
    // Sessions (R8: usage + alert) stacked; voice sessions are reported beside them, not inside.
    const datasets = [
      { type: "bar", label: "Usage sessions", data: series.map((p) => p.usage_sessions), backgroundColor: color("--usage"), stack: "sessions", yAxisID: "y", order: 2 },
      { type: "bar", label: "Alert sessions", data: series.map((p) => p.alert_sessions), backgroundColor: color("--alert"), stack: "sessions", yAxisID: "y", order: 2 },
      { type: "bar", label: "Voice sessions", data: series.map((p) => p.voice_sessions), backgroundColor: color("--voice"), stack: "voice", yAxisID: "y", order: 2 },
      { type: "line", label: "Agents", data: series.map((p) => p.agents), borderColor: color("--agents"), backgroundColor: color("--agents"), yAxisID: "agents", pointRadius: series.length > 40 ? 0 : 3, pointHoverRadius: 5, tension: 0.2, order: 1 },
    ];
    if (chart) {
      chart.data.labels = labels;
      chart.data.datasets.forEach((d, i) => { d.data = datasets[i].data; d.pointRadius = datasets[i].pointRadius; });
      chart.update("none");
      hideTooltip();
      return;
    }
    chart = new Chart(canvas, {
      data: { labels, datasets },
      options: {
        responsive: true,
        maintainAspectRatio: false,
        animation: false,
        interaction: { mode: "index", intersect: false },
        scales: {
          x: { stacked: true, grid: { display: false }, ticks: { autoSkip: true, maxRotation: 0 } },
          y: { stacked: true, beginAtZero: true, title: { display: true, text: "Sessions" }, ticks: { precision: 0, callback: (v) => formatInteger(v) } },
          agents: { position: "right", beginAtZero: true, grace: "25%", grid: { display: false }, title: { display: true, text: "Agents" }, ticks: { precision: 0, callback: (v) => formatInteger(v) } },
        },
        plugins: {
          legend: { position: "bottom", labels: { boxWidth: 12, boxHeight: 12 } },
          tooltip: { enabled: false, external: drawTooltip },
        },
      },
    });
    canvas.dataset.ready = "true";
  }

  // The tooltip is HTML (role="tooltip"), so assistive technology and tests read what people see.
  function drawTooltip({ chart: c, tooltip: t }) {
    if (t.opacity === 0 || !t.dataPoints?.length) { hideTooltip(); return; }
    showPoint(t.dataPoints[0].dataIndex, t.caretX, t.caretY, c);
  }

  function showPoint(index, x, y, c) {
    const point = series[index];
    if (!point) return;
    const row = (label, key, swatch) => [
      el("dt", {}, swatch ? el("span", { class: "swatch", style: { background: color(swatch) } }) : null, label),
      el("dd", { "data-metric": key, "data-value": point[key] }, formatInteger(point[key])),
    ];
    tooltip.replaceChildren(
      el("div", { class: "date", "data-period": point.period }, periodLabel(point.period, true)),
      el("dl", {},
        row("Sessions", "billing_sessions"),
        row("Usage sessions", "usage_sessions", "--usage"),
        row("Voice sessions", "voice_sessions", "--voice"),
        row("Alert sessions", "alert_sessions", "--alert"),
        row("Agents", "agents", "--agents"),
        row("Active agents", "active_agents")));
    tooltip.hidden = false;
    canvas.setAttribute("aria-describedby", "chart-tooltip");
    const box = c.canvas.parentElement.getBoundingClientRect();
    const width = tooltip.offsetWidth;
    const left = x + 14 + width > box.width ? Math.max(0, x - 14 - width) : x + 14;
    tooltip.style.left = `${left}px`;
    tooltip.style.top = `${Math.max(0, Math.min(y - 20, box.height - tooltip.offsetHeight))}px`;
  }

  function hideTooltip() {
    tooltip.hidden = true;
    canvas.removeAttribute("aria-describedby");
  }

  // Keyboard: the graph takes focus; arrow keys walk the periods and show each one's tooltip.
  let keyIndex = -1;
  canvas.tabIndex = 0;
  canvas.addEventListener("keydown", (event) => {
    if (!chart || !series.length) return;
    const step = { ArrowRight: 1, ArrowLeft: -1, Home: -Infinity, End: Infinity }[event.key];
    if (event.key === "Escape") { hideTooltip(); return; }
    if (step === undefined) return;
    event.preventDefault();
    keyIndex = Math.max(0, Math.min(series.length - 1, keyIndex < 0 && step < 0 ? series.length - 1 : keyIndex + step));
    const bar = chart.getDatasetMeta(0).data[keyIndex];
    chart.setActiveElements(chart.data.datasets.map((_, i) => ({ datasetIndex: i, index: keyIndex })));
    chart.update("none");
    showPoint(keyIndex, bar.x, chart.chartArea.top + 10, chart);
  });
  canvas.addEventListener("blur", () => { keyIndex = -1; hideTooltip(); });

  // -- start -------------------------------------------------------------------------------
  syncControls();
  api("/api/v1/apps").then((data) => {
    for (const app of data.apps) appSelect.append(el("option", { value: app.app_id }, app.app_id));
    appSelect.value = state.app;
  }).catch((error) => { if (error.status !== 401) showMessage(message, error.message); });
  load();
})();
