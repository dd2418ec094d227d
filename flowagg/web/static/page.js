/* flowagg's top-talkers page: a client of the public API (GET /flows/hours, /flows/top and
 * /flows/series) that draws a table and a stacked bar chart in plain SVG. No library, no build.
 *
 * Counters are exact at any size in the API and may pass 2**53, where a JavaScript number stops
 * being exact: JSON is parsed with its source text, every integer becoming a BigInt, so the table
 * shows every digit (a browser without source text access shows numbers, exact below 2**53).
 * Names are data from whoever posts flows: they reach the document only as text, never as markup.
 * URLs are relative, so the page also works behind a proxy that serves it under a prefix.
 */
"use strict";

const FIELDS = ["src_app", "dest_app", "vpc_id"];
const REFRESH_MS = 10_000;
const DEFAULT_HOURS = 24n;
const EPOCH_HOURS = 300_000n; // from this hour on (the year 2004) hours are hours since 1970
const LAST_DATE_HOUR = 70_389_527n; // 9999-12-31 23:00 UTC: later years do not print as YYYY
const CHART_GROUPS = 10; // groups the chart colours; the rest of the range's groups are "other"
const PALETTE = [
  "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2",
  "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#17a2b8",
];
const OTHER_COLOR = "#b0b0b0";
const SVG_NS = "http://www.w3.org/2000/svg";

const $ = (id) => document.getElementById(id);

const state = {
  follow: true, // the range is the newest 24 hours held, until the user picks one
  filters: { src_app: [], dest_app: [], vpc_id: [] },
  generation: 0, // of the latest refresh: answers to older ones are dropped
  timer: null, // the auto-refresh interval, while on
  series: null, // the series drawn last, redrawn when the window is resized
};

// -- the API -------------------------------------------------------------------------------------

class ApiError extends Error {}

function parseJSON(text) {
  return JSON.parse(text, (key, value, context) =>
    typeof value === "number" && Number.isInteger(value) && context?.source !== undefined
      ? BigInt(context.source)
      : value,
  );
}

const big = (value) => (typeof value === "bigint" ? value : BigInt(value));

async function api(path, params) {
  const url = params ? `${path}?${params}` : path;
  let response;
  try {
    response = await fetch(url, { headers: { Accept: "application/json" }, cache: "no-store" });
  } catch (err) {
    throw new ApiError(`cannot reach the service: ${err.message}`);
  }
  const text = await response.text();
  if (!response.ok) {
    let reason = text.trim() || response.statusText;
    try {
      reason = JSON.parse(text).error ?? reason;
    } catch {
      // not JSON (a proxy's page, say): show it as it came
    }
    throw new ApiError(`GET /${path} answered ${response.status}: ${reason}`);
  }
  return parseJSON(text);
}

// -- formatting ----------------------------------------------------------------------------------

const integer = (value) => big(value).toLocaleString("en-US");

function utc(hour) {
  // "2026-11-26 05:00 UTC" for an hour since the Unix epoch; "" for a smaller (or huge) hour
  const h = big(hour);
  if (h < EPOCH_HOURS || h > LAST_DATE_HOUR) return "";
  return `${new Date(Number(h) * 3_600_000).toISOString().slice(0, 16).replace("T", " ")} UTC`;
}

function share(part, whole) {
  // part / whole in percent with one decimal, rounded half up, computed exactly
  if (whole === 0n) return "–";
  const tenths = (part * 2000n + whole) / (2n * whole);
  return `${tenths / 10n}.${tenths % 10n}%`;
}

const bytesFormat = new Intl.NumberFormat("en-US", { maximumSignificantDigits: 3 });
function bytes(n) {
  // an axis label: 1000-based units
  const units = ["B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) {
    n /= 1000;
    i += 1;
  }
  return `${bytesFormat.format(n)} ${units[i]}`;
}

function measure(order, tx, rx) {
  if (order === "bytes_tx") return tx;
  if (order === "bytes_rx") return rx;
  return tx + rx;
}

const label = (by, group) => by.map((field) => group[field]).join(" · ");

function element(tag, attributes = {}, text) {
  const node = tag.startsWith("svg:")
    ? document.createElementNS(SVG_NS, tag.slice(4))
    : document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

// -- the form ------------------------------------------------------------------------------------

function selectedBy() {
  return [...document.querySelectorAll('input[name="by"]:checked')].map((box) => box.value);
}

function queryParams() {
  const params = new URLSearchParams();
  params.set("start", $("start").value.trim());
  params.set("end", $("end").value.trim());
  params.set("by", selectedBy().join(","));
  for (const field of FIELDS) {
    for (const name of state.filters[field]) params.append(field, name);
  }
  params.set("order", $("order").value);
  params.set("limit", $("limit").value.trim());
  return params;
}

function setRange(start, end) {
  $("start").value = start.toString();
  $("end").value = end.toString();
}

function showRangeTimes() {
  const parts = [];
  for (const id of ["start", "end"]) {
    const text = $(id).value.trim();
    if (/^[0-9]+$/.test(text) && utc(text)) parts.push(`${id} ${text} = ${utc(text)}`);
  }
  $("range-time").textContent = parts.join(" · ");
}

function renderChips(field) {
  const chips = document.querySelector(`.filter[data-field="${field}"] .chips`);
  chips.replaceChildren(
    ...state.filters[field].map((name) => {
      const chip = element("button", { type: "button", class: "chip", title: `remove this ${field}` });
      chip.dataset.name = name;
      chip.append(element("span", {}, name), element("span", { class: "remove" }, "×"));
      chip.addEventListener("click", () => {
        state.filters[field] = state.filters[field].filter((n) => n !== name);
        renderChips(field);
        refresh();
      });
      return chip;
    }),
  );
}

function saveToHash(params) {
  const saved = new URLSearchParams(params);
  if (state.follow) {
    saved.delete("start");
    saved.delete("end");
  }
  if ($("auto").checked) saved.set("auto", "1");
  history.replaceState(null, "", `#${saved}`);
}

function loadFromHash() {
  const saved = new URLSearchParams(location.hash.slice(1));
  if (saved.has("start")) {
    setRange(saved.get("start"), saved.get("end") ?? saved.get("start"));
    state.follow = false;
  }
  if (saved.has("by")) {
    const by = saved.get("by").split(",");
    for (const box of document.querySelectorAll('input[name="by"]')) box.checked = by.includes(box.value);
  }
  for (const field of FIELDS) {
    state.filters[field] = [...new Set(saved.getAll(field).filter((name) => name !== ""))];
    renderChips(field);
  }
  if (saved.has("order")) $("order").value = saved.get("order");
  if (saved.has("limit")) $("limit").value = saved.get("limit");
  $("auto").checked = saved.get("auto") === "1";
}

function setAuto(on) {
  clearInterval(state.timer);
  state.timer = on ? setInterval(refresh, REFRESH_MS) : null;
}

// -- a refresh -----------------------------------------------------------------------------------

function showMessage(text, kind) {
  const message = $("message");
  message.textContent = text;
  message.className = `message ${kind}`;
  message.hidden = false;
}

function showHeld(held) {
  const count = big(held.count);
  if (count === 0n) {
    $("held").textContent = "no hours held";
    return;
  }
  const when = (hour) => (utc(hour) ? ` (${utc(hour)})` : "");
  $("held").textContent =
    `${integer(count)} hour${count === 1n ? "" : "s"} held: ${held.oldest}${when(held.oldest)}` +
    ` to ${held.newest}${when(held.newest)}`;
}

async function refresh() {
  const generation = ++state.generation;
  const current = () => generation === state.generation;
  $("updated").textContent = "loading…";
  try {
    const held = await api("flows/hours");
    if (!current()) return;
    showHeld(held);
    if (big(held.count) === 0n) {
      showMessage("The store holds no flows yet: POST some to /flows and they show here.", "empty");
      $("results").hidden = true;
      $("updated").textContent = `checked ${new Date().toLocaleTimeString()}`;
      return;
    }
    if (state.follow) {
      const newest = big(held.newest);
      const start = newest - DEFAULT_HOURS + 1n;
      setRange(start < big(held.oldest) ? big(held.oldest) : start, newest);
    }
    showRangeTimes();
    const params = queryParams();
    const chartParams = new URLSearchParams(params);
    chartParams.set("limit", String(Math.min(CHART_GROUPS, Number(params.get("limit")) || CHART_GROUPS)));
    const answers = await Promise.allSettled([
      api("flows/top", params),
      api("flows/series", chartParams),
    ]);
    if (!current()) return;
    const failed = answers.find((answer) => answer.status === "rejected");
    if (failed) throw failed.reason; // the table's error first, whichever came back first
    const [top, series] = answers.map((answer) => answer.value);
    $("message").hidden = true;
    $("results").hidden = false; // before drawing: the chart takes its width from the page
    renderTable(top);
    renderChart(series);
    saveToHash(params);
    $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (err) {
    if (!current()) return;
    showMessage(err.message, "error");
    $("results").hidden = true;
    $("updated").textContent = "";
  }
}

// -- the table -----------------------------------------------------------------------------------

function numberCells(row, order, tx, rx, whole) {
  for (const value of [tx, rx, tx + rx]) {
    row.append(element("td", { class: "num", "data-value": value.toString() }, integer(value)));
  }
  const cell = element("td", { class: "num share" });
  const part = measure(order, tx, rx);
  const bar = element("span", { class: "share-bar" });
  bar.style.width = whole === 0n ? "0" : `${Number((part * 1000n) / whole) / 10}%`;
  cell.append(bar, element("span", { class: "share-text" }, share(part, whole)));
  row.append(cell);
}

function renderTable(top) {
  const { by, order } = top;
  const whole = measure(order, big(top.total.bytes_tx), big(top.total.bytes_rx));
  const groups = big(top.total.groups);
  const range = top.start === top.end ? `hour ${top.start}` : `hours ${top.start} to ${top.end}`;
  $("table-title").textContent =
    `Top ${top.rows.length} of ${integer(groups)} group${groups === 1n ? "" : "s"} by ` +
    `${by.join(", ")} in ${range}, ranked by ${order}`;

  const head = element("tr");
  head.append(element("th", { class: "rank" }, "#"));
  for (const field of by) head.append(element("th", {}, field));
  for (const name of ["bytes_tx", "bytes_rx", "bytes"]) head.append(element("th", { class: "num" }, name));
  head.append(element("th", { class: "num" }, `share of ${order}`));
  $("top").tHead.replaceChildren(head);

  const body = $("top").tBodies[0];
  body.replaceChildren();
  top.rows.forEach((row, i) => {
    const tr = element("tr", { class: "row" });
    tr.append(element("td", { class: "rank" }, String(i + 1)));
    for (const field of by) tr.append(element("td", { class: "name", "data-field": field }, row[field]));
    numberCells(tr, order, big(row.bytes_tx), big(row.bytes_rx), whole);
    body.append(tr);
  });
  if (top.rows.length === 0) {
    const tr = element("tr", { class: "none" });
    tr.append(element("td", { colspan: String(by.length + 5) }, `No flows match in ${range}.`));
    body.append(tr);
  }

  const foot = $("top").tFoot;
  foot.replaceChildren();
  for (const [kind, summary] of [["other", top.other], ["total", top.total]]) {
    const n = big(summary.groups);
    const tr = element("tr", { class: kind });
    tr.append(element("td", { class: "rank" }));
    tr.append(element("td", { colspan: String(by.length) }, `${kind} (${integer(n)} group${n === 1n ? "" : "s"})`));
    numberCells(tr, order, big(summary.bytes_tx), big(summary.bytes_rx), whole);
    foot.append(tr);
  }
}

// -- the chart -----------------------------------------------------------------------------------

function niceStep(roughStep) {
  const magnitude = 10 ** Math.floor(Math.log10(roughStep));
  const residual = roughStep / magnitude;
  return (residual <= 1 ? 1 : residual <= 2 ? 2 : residual <= 5 ? 5 : 10) * magnitude;
}

function renderChart(series) {
  state.series = series;
  const { by, order, groups } = series;
  const svg = $("chart");
  const width = Math.max(360, $("chart-box").clientWidth);
  const height = 320;
  const margin = { top: 14, right: 16, bottom: 46, left: 76 };
  const plotWidth = width - margin.left - margin.right;
  const plotHeight = height - margin.top - margin.bottom;
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("width", String(width));
  svg.setAttribute("height", String(height));
  svg.replaceChildren();

  const hours = series.hours.map((h) => {
    const sums = [...h.values, h.other].map(([tx, rx]) => [big(tx), big(rx)]);
    return { hour: big(h.hour), sums, parts: sums.map(([tx, rx]) => measure(order, tx, rx)) };
  });
  let peak = 0n;
  for (const h of hours) {
    const stacked = h.parts.reduce((a, b) => a + b, 0n);
    if (stacked > peak) peak = stacked;
  }
  const step = peak === 0n ? 1 : niceStep(Number(peak) / 4);
  const axisTop = peak === 0n ? 4 : Math.ceil(Number(peak) / step) * step;
  const y = (value) => margin.top + plotHeight - (value / axisTop) * plotHeight;

  const axis = element("svg:g", { class: "axis" });
  for (let tick = 0; tick <= axisTop * (1 + 1e-9); tick += step) {
    axis.append(element("svg:line", { class: "grid", x1: margin.left, x2: width - margin.right, y1: y(tick), y2: y(tick) }));
    axis.append(element("svg:text", { x: margin.left - 8, y: y(tick) + 4, "text-anchor": "end" }, bytes(tick)));
  }
  svg.append(axis);

  const band = plotWidth / hours.length;
  const barWidth = Math.max(1, band * 0.78);
  const every = Math.ceil(hours.length / Math.max(1, Math.floor(plotWidth / 78)));
  const labels = element("svg:g", { class: "axis labels" });
  hours.forEach((h, i) => {
    const left = margin.left + i * band;
    const bar = element("svg:g", { class: "bar", "data-hour": h.hour.toString() });
    let top = margin.top + plotHeight;
    h.parts.forEach((part, j) => {
      if (part === 0n) return;
      const size = (Number(part) / axisTop) * plotHeight;
      top -= size;
      const isOther = j === groups.length;
      bar.append(element("svg:rect", {
        class: isOther ? "segment other" : "segment",
        x: left + (band - barWidth) / 2, y: top, width: barWidth, height: size,
        fill: isOther ? OTHER_COLOR : PALETTE[j % PALETTE.length],
      }));
    });
    // Over the whole band, so that the pointer finds an empty hour too.
    bar.append(element("svg:rect", { class: "hit", x: left, y: margin.top, width: band, height: plotHeight }));
    bar.addEventListener("pointerenter", (event) => showTooltip(series, h, bar, event));
    bar.addEventListener("pointermove", (event) => placeTooltip(event));
    bar.addEventListener("pointerleave", () => hideTooltip(bar));
    svg.append(bar);
    if (i % every === 0) {
      const text = element("svg:text", { x: left + band / 2, y: height - margin.bottom + 16, "text-anchor": "middle" });
      text.append(element("svg:tspan", {}, h.hour.toString()));
      const when = utc(h.hour);
      if (when) text.append(element("svg:tspan", { x: left + band / 2, dy: 14, class: "when" }, when.slice(5, 16)));
      labels.append(text);
    }
  });
  svg.append(labels);
  svg.append(element("svg:line", { class: "baseline", x1: margin.left, x2: width - margin.right, y1: y(0), y2: y(0) }));

  $("chart-title").textContent =
    `Per hour: the top ${groups.length} by ${order}, stacked` + (hours.length ? "" : " (no hours)");
  const legend = $("legend");
  legend.replaceChildren();
  [...groups.map((group) => label(by, group)), "other"].forEach((name, j) => {
    const item = element("li");
    const swatch = element("span", { class: "swatch" });
    swatch.style.background = j === groups.length ? OTHER_COLOR : PALETTE[j % PALETTE.length];
    item.append(swatch, element("span", {}, name));
    legend.append(item);
  });
}

function showTooltip(series, h, bar, event) {
  bar.classList.add("active");
  const tooltip = $("tooltip");
  const when = utc(h.hour);
  const title = element("div", { class: "tooltip-title" }, `hour ${h.hour}${when ? ` · ${when}` : ""}`);
  const table = element("table");
  const names = [...series.groups.map((group) => label(series.by, group)), "other"];
  let sum = 0n;
  names.forEach((name, j) => {
    const [tx, rx] = h.sums[j];
    sum += h.parts[j];
    const tr = element("tr");
    const swatch = element("span", { class: "swatch" });
    swatch.style.background = j === series.groups.length ? OTHER_COLOR : PALETTE[j % PALETTE.length];
    const nameCell = element("td");
    nameCell.append(swatch, element("span", {}, name));
    tr.append(nameCell, element("td", { class: "num" }, integer(h.parts[j])));
    tr.append(element("td", { class: "num detail" }, `tx ${integer(tx)} · rx ${integer(rx)}`));
    table.append(tr);
  });
  const total = element("tr", { class: "sum" });
  total.append(element("td", {}, `all (${series.order})`), element("td", { class: "num" }, integer(sum)), element("td"));
  table.append(total);
  tooltip.replaceChildren(title, table);
  tooltip.hidden = false;
  placeTooltip(event);
}

function placeTooltip(event) {
  const tooltip = $("tooltip");
  const box = $("chart-box").getBoundingClientRect();
  const x = event.clientX - box.left;
  const left = x + 16 + tooltip.offsetWidth > box.width ? x - 16 - tooltip.offsetWidth : x + 16;
  tooltip.style.left = `${Math.max(0, left)}px`;
  tooltip.style.top = `${Math.max(0, event.clientY - box.top - 20)}px`;
}

function hideTooltip(bar) {
  bar.classList.remove("active");
  $("tooltip").hidden = true;
}

// -- wiring --------------------------------------------------------------------------------------

function start() {
  $("query").addEventListener("submit", (event) => {
    event.preventDefault();
    refresh();
  });
  for (const id of ["start", "end"]) {
    $(id).addEventListener("input", () => {
      state.follow = false;
      showRangeTimes();
    });
    $(id).addEventListener("change", refresh);
  }
  $("newest").addEventListener("click", () => {
    state.follow = true;
    refresh();
  });
  for (const control of [...document.querySelectorAll('input[name="by"]'), $("order"), $("limit")]) {
    control.addEventListener("change", refresh);
  }
  for (const field of FIELDS) {
    const input = $(`filter-${field}`);
    input.addEventListener("keydown", (event) => {
      if (event.key !== "Enter") return;
      event.preventDefault(); // adds a filter; does not submit the form
      const name = input.value;
      if (name !== "" && !state.filters[field].includes(name)) {
        state.filters[field].push(name);
        renderChips(field);
        refresh();
      }
      input.value = "";
    });
  }
  $("auto").addEventListener("change", () => {
    setAuto($("auto").checked);
    saveToHash(queryParams());
  });
  window.addEventListener("resize", () => {
    if (state.series && !$("results").hidden) renderChart(state.series);
  });
  loadFromHash();
  setAuto($("auto").checked);
  refresh();
}

start();
