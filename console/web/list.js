// #/ : the session list with its filters, count and chart.
import { api, withQuery } from "./api.js";
import { h, setAlert, uniqueId } from "./dom.js";
import { timeEl, utcText, durationText, bytesEl } from "./format.js";
import { renderChart } from "./chart.js";

const TEXT_FILTERS = [
  ["user", "User", "email (any case)"],
  ["device", "Device", "device id"],
  ["destination", "Destination", "address or address:port"],
  ["router", "Router", "router id"],
];
const TIME_FILTERS = [
  ["since", "From"],
  ["until", "To"],
];
const FLAG_FILTERS = [
  ["has_file_ops", "Has file operations"],
  ["active", "Still active"],
];
const API_KEYS = ["user", "device", "destination", "router", "since", "until", "has_file_ops", "active"];
const LIMIT = 200;

/** The API's since/until take "2026-12-05T10:00"; a datetime-local input wants the same. */
function toLocalInput(value) {
  const m = /^(\d{4}-\d\d-\d\dT\d\d:\d\d(?::\d\d)?)/.exec(value || "");
  return m ? m[1] : "";
}

export function sessionHref(session) {
  const id = encodeURIComponent(session.id);
  return session.router_id ? `#/sessions/${id}?router=${encodeURIComponent(session.router_id)}` : `#/sessions/${id}`;
}

function statusCell(x) {
  if (x.decision === "block") return h("span", { class: "badge badge-blocked" }, "blocked");
  if (!x.ended_at && !x.close_reason) return h("span", { class: "badge badge-active" }, "active");
  return h("span", { class: "clip-status", title: x.close_reason || null }, x.close_reason || "ended");
}

function sessionRow(x, showRouter) {
  const duration = x.duration_ms ?? (x.ended_at ? null : undefined);
  return h(
    "tr",
    { "data-session-id": x.id },
    h("td", null, h("a", { href: sessionHref(x), class: "mono" }, x.id)),
    h("td", { class: "nowrap", title: utcText(x.started_at) }, timeEl(x.started_at, { seconds: false })),
    h("td", { class: "clip clip-user", title: x.email || null }, x.email || h("span", { class: "muted" }, "—")),
    h("td", { class: "clip clip-device mono", title: x.device_id || null }, x.device_id || h("span", { class: "muted" }, "—")),
    h("td", { class: "clip clip-dest mono", title: x.destination || null }, x.destination || "—"),
    h("td", null, x.login || h("span", { class: "muted" }, "—")),
    h("td", { class: "num nowrap" }, duration === undefined ? h("span", { class: "muted" }, "running") : durationText(duration)),
    h("td", { class: "num nowrap" }, bytesEl(x.bytes_from_client)),
    h("td", { class: "num nowrap" }, bytesEl(x.bytes_from_server)),
    h("td", { class: "num" }, String(x.file_op_count ?? 0)),
    h("td", null, statusCell(x)),
    showRouter ? h("td", { class: "mono" }, x.router_id || "—") : null,
  );
}

export function listView(root, params) {
  const hintId = uniqueId("utc-hint");
  const inputs = {};

  const form = h("form", { class: "filters", "aria-label": "Filters", novalidate: true });
  for (const [name, label, placeholder] of TEXT_FILTERS) {
    const id = uniqueId(`f-${name}`);
    inputs[name] = h("input", { type: "text", id, name, placeholder, autocomplete: "off", spellcheck: "false" });
    form.append(h("div", { class: "field" }, h("label", { for: id }, label), inputs[name]));
  }
  for (const [name, label] of TIME_FILTERS) {
    const id = uniqueId(`f-${name}`);
    inputs[name] = h("input", { type: "datetime-local", id, name, "aria-describedby": hintId });
    form.append(h("div", { class: "field" }, h("label", { for: id }, label), inputs[name]));
  }
  const flags = h("div", { class: "field flags" });
  for (const [name, label] of FLAG_FILTERS) {
    const id = uniqueId(`f-${name}`);
    inputs[name] = h("input", { type: "checkbox", id, name });
    flags.append(h("div", { class: "check" }, inputs[name], h("label", { for: id }, label)));
  }
  flags.append(h("p", { class: "hint", id: hintId }, "From and To are UTC times."));
  form.append(flags);
  const resetBtn = h("button", { type: "button", class: "button-quiet" }, "Clear");
  form.append(h("div", { class: "field actions" }, h("button", { type: "submit" }, "Apply"), resetBtn));

  const errorEl = h("div", { class: "alert", role: "alert", hidden: true });

  const chartById = uniqueId("chart-by");
  const chartBy = h(
    "select",
    { id: chartById },
    h("option", { value: "destination" }, "destination"),
    h("option", { value: "user" }, "user"),
  );
  const chartBox = h("div", { class: "chart-box" });
  const chartError = h("div", { class: "alert", role: "alert", hidden: true });
  const chartHeading = uniqueId("chart-h");
  const chartSection = h(
    "section",
    { class: "card chart-card", "aria-labelledby": chartHeading },
    h("div", { class: "card-head" }, h("h2", { id: chartHeading }, "Sessions over time"), h("div", { class: "inline-field" }, h("label", { for: chartById }, "Chart by"), chartBy)),
    chartError,
    chartBox,
  );

  const countEl = h("span", { "data-testid": "session-count", class: "count" }, "… sessions");
  const countNote = h("span", { class: "muted" });
  const tbody = h("tbody");
  const routerTh = h("th", { scope: "col", hidden: true }, "Router");
  const table = h(
    "table",
    { "data-testid": "sessions-table", class: "data-table" },
    h("caption", { class: "visually-hidden" }, "Sessions, newest first. Times are UTC."),
    h(
      "thead",
      null,
      h(
        "tr",
        null,
        ["Session", "Started (UTC)", "User", "Device", "Destination", "Login", "Duration"].map((t) => h("th", { scope: "col" }, t)),
        h("th", { scope: "col", class: "num" }, h("abbr", { title: "Bytes from the client" }, "Sent")),
        h("th", { scope: "col", class: "num" }, h("abbr", { title: "Bytes from the server" }, "Received")),
        h("th", { scope: "col", class: "num" }, h("abbr", { title: "File operations" }, "Files")),
        h("th", { scope: "col" }, "Status"),
        routerTh,
      ),
    ),
    tbody,
  );
  const tableWrap = h("div", { class: "table-wrap", tabindex: "0", role: "region", "aria-label": "Sessions table (scrolls)" }, table);

  root.append(
    h("h1", { tabindex: "-1" }, "Sessions"),
    form,
    errorEl,
    chartSection,
    h("p", { class: "count-line" }, countEl, " ", countNote),
    tableWrap,
  );

  let current = new URLSearchParams();
  // Answers that arrive after a newer request was sent are dropped.
  let listSeq = 0;
  let chartSeq = 0;

  function apiFilters(p) {
    const q = new URLSearchParams();
    for (const k of API_KEYS) {
      const v = p.get(k);
      if (v) q.set(k, v);
    }
    return q;
  }

  function fillForm(p) {
    for (const [name] of TEXT_FILTERS) inputs[name].value = p.get(name) || "";
    for (const [name] of TIME_FILTERS) inputs[name].value = toLocalInput(p.get(name));
    for (const [name] of FLAG_FILTERS) inputs[name].checked = p.get(name) === "true";
    chartBy.value = p.get("by") === "user" ? "user" : "destination";
  }

  function formParams() {
    const p = new URLSearchParams();
    for (const [name] of TEXT_FILTERS) {
      const v = inputs[name].value.trim();
      if (v) p.set(name, v);
    }
    for (const [name] of TIME_FILTERS) if (inputs[name].value) p.set(name, inputs[name].value);
    for (const [name] of FLAG_FILTERS) if (inputs[name].checked) p.set(name, "true");
    if (chartBy.value === "user") p.set("by", "user");
    return p;
  }

  async function loadChart(p, mySeq) {
    chartBox.setAttribute("aria-busy", "true");
    try {
      const q = apiFilters(p);
      q.set("by", chartBy.value);
      const data = await api(withQuery("chart", q));
      if (mySeq !== chartSeq) return;
      const { svg, legend, table: dataTable } = renderChart(data);
      setAlert(chartError, "");
      chartBox.replaceChildren(
        data.truncated
          ? h("p", { class: "hint" }, "The chart counts the newest 100,000 matching sessions only; narrow the filters for the rest.")
          : null,
        svg,
        legend,
        h("details", { class: "chart-data" }, h("summary", null, "Chart data as a table"), h("div", { class: "table-wrap" }, dataTable)),
      );
    } catch (e) {
      if (mySeq !== chartSeq) return;
      chartBox.replaceChildren();
      setAlert(chartError, `Chart: ${e.message}`);
    } finally {
      chartBox.removeAttribute("aria-busy");
    }
  }

  async function loadSessions(p, mySeq) {
    table.setAttribute("aria-busy", "true");
    try {
      const q = apiFilters(p);
      q.set("limit", String(LIMIT));
      const data = await api(withQuery("sessions", q));
      if (mySeq !== listSeq) return;
      const sessions = Array.isArray(data.sessions) ? data.sessions : [];
      const count = Number.isFinite(Number(data.count)) ? Number(data.count) : sessions.length;
      countEl.textContent = `${count} sessions`;
      countNote.textContent = count > sessions.length ? `(the newest ${sessions.length} are listed; narrow the filters to see others)` : "";
      const showRouter = sessions.some((x) => x.router_id);
      routerTh.hidden = !showRouter;
      tbody.replaceChildren(...sessions.map((x) => sessionRow(x, showRouter)));
      if (!sessions.length) {
        tbody.append(h("tr", { class: "empty-row" }, h("td", { colspan: showRouter ? 12 : 11 }, "No sessions match these filters.")));
      }
      setAlert(errorEl, "");
    } catch (e) {
      if (mySeq !== listSeq) return;
      countEl.textContent = "? sessions";
      countNote.textContent = "";
      tbody.replaceChildren();
      setAlert(errorEl, `Could not load sessions: ${e.message}`);
    } finally {
      table.removeAttribute("aria-busy");
    }
  }

  function load(p) {
    current = p;
    fillForm(p);
    listSeq += 1;
    chartSeq += 1;
    loadSessions(p, listSeq);
    loadChart(p, chartSeq);
  }

  function navigate(p) {
    const qs = p.toString();
    const target = qs ? `#/?${qs}` : "#/";
    if (location.hash === target) load(p);
    else location.hash = target; // the router calls update()
  }

  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    navigate(formParams());
  });
  resetBtn.addEventListener("click", () => navigate(new URLSearchParams()));
  chartBy.addEventListener("change", () => {
    const p = new URLSearchParams(current);
    if (chartBy.value === "user") p.set("by", "user");
    else p.delete("by");
    current = p;
    const qs = p.toString();
    history.replaceState(null, "", qs ? `#/?${qs}` : "#/");
    chartSeq += 1;
    loadChart(p, chartSeq);
  });

  load(params);
  return {
    title: "Sessions",
    update(p) {
      load(p);
    },
  };
}
