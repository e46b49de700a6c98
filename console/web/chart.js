// Sessions over time: a hand-drawn SVG stacked bar chart of /api/v1/chart, with a legend
// and the same numbers as a table.
import { h, s } from "./dom.js";
import { utcText } from "./format.js";

// Categorical colours, each at least 4.5:1 against the white background (so bars and
// legend swatches stay distinct from it), ordered to keep neighbours apart. "other" is grey.
export const PALETTE = [
  "#1f5fa8", // blue
  "#b14d00", // burnt orange
  "#1b7a3a", // green
  "#a8174a", // crimson
  "#6a3d9a", // purple
  "#006c75", // teal
  "#7a5a00", // ochre
  "#c0139a", // magenta
];
export const OTHER_COLOR = "#5f6368";

const W = 1180;
const H = 190;
const M = { top: 12, right: 12, bottom: 40, left: 48 };

function niceStep(max, ticks) {
  const raw = Math.max(1, max) / ticks;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const norm = raw / mag;
  const step = norm <= 1 ? 1 : norm <= 2 ? 2 : norm <= 5 ? 5 : 10;
  return Math.max(1, step * mag);
}

function bucketName(secs) {
  if (secs % 86400 === 0) return secs === 86400 ? "day" : `${secs / 86400} days`;
  if (secs % 3600 === 0) return secs === 3600 ? "hour" : `${secs / 3600} hours`;
  if (secs % 60 === 0) return secs === 60 ? "minute" : `${secs / 60} minutes`;
  return `${secs} seconds`;
}

function axisLabel(start, bucketSecs, prevStart) {
  const full = utcText(start, { seconds: false }); // 2026-12-05 10:00
  if (bucketSecs >= 86400) return full.slice(0, 10);
  const sameDay = prevStart && utcText(prevStart).slice(0, 10) === full.slice(0, 10);
  return sameDay ? full.slice(11) : `${full.slice(5, 10)} ${full.slice(11)}`;
}

/** Series keys by total, largest first, "other" last. */
function seriesOf(buckets) {
  const totals = new Map();
  for (const b of buckets) {
    for (const [k, v] of Object.entries(b.counts || {})) totals.set(k, (totals.get(k) || 0) + Number(v || 0));
  }
  const keys = [...totals.keys()].filter((k) => k !== "other");
  keys.sort((a, b) => totals.get(b) - totals.get(a) || a.localeCompare(b));
  if (totals.has("other")) keys.push("other");
  return keys.map((key, i) => ({
    key,
    total: totals.get(key),
    color: key === "other" ? OTHER_COLOR : PALETTE[i % PALETTE.length],
  }));
}

/**
 * Returns {svg, legend, table} for a /api/v1/chart answer. `by` is "destination" or "user".
 */
export function renderChart(data) {
  const by = data.by === "user" ? "user" : "destination";
  const buckets = Array.isArray(data.buckets) ? data.buckets : [];
  const bucketSecs = Number(data.bucket_secs) || 3600;
  const series = seriesOf(buckets);
  const totals = buckets.map((b) => Object.values(b.counts || {}).reduce((a, v) => a + Number(v || 0), 0));
  const grand = totals.reduce((a, v) => a + v, 0);
  const per = bucketName(bucketSecs);

  let label;
  if (!buckets.length || grand === 0) {
    label = `Chart of sessions per ${per} by ${by}: no sessions in this range.`;
  } else {
    const first = utcText(buckets[0].start, { seconds: false });
    const last = utcText(buckets[buckets.length - 1].start, { seconds: false });
    const top = series
      .slice(0, 4)
      .map((x) => `${x.key} ${x.total}`)
      .join(", ");
    label =
      `Stacked bar chart of sessions per ${per} by ${by}, ${first} to ${last} UTC: ` +
      `${grand} sessions in ${buckets.length} bars. Most: ${top}. The table below has every number.`;
  }

  const svg = s("svg", {
    "data-testid": "sessions-chart",
    role: "img",
    "aria-label": label,
    viewBox: `0 0 ${W} ${H}`,
    class: "chart",
    preserveAspectRatio: "xMidYMid meet",
  });

  const plotW = W - M.left - M.right;
  const plotH = H - M.top - M.bottom;
  const max = Math.max(1, ...totals);
  const step = niceStep(max, 4);
  const top = Math.ceil(max / step) * step;
  const y = (v) => M.top + plotH - (v / top) * plotH;

  // Grid lines and the count axis.
  const grid = s("g", { class: "chart-grid", "aria-hidden": "true" });
  for (let v = 0; v <= top; v += step) {
    grid.append(
      s("line", { x1: M.left, x2: W - M.right, y1: y(v), y2: y(v), class: v === 0 ? "axis" : "gridline" }),
      s("text", { x: M.left - 8, y: y(v) + 4, "text-anchor": "end", class: "tick" }, String(v)),
    );
  }
  grid.append(
    s(
      "text",
      { x: 14, y: M.top + plotH / 2, class: "axis-title", transform: `rotate(-90 14 ${M.top + plotH / 2})`, "text-anchor": "middle" },
      "Sessions",
    ),
  );
  svg.append(grid);

  if (!buckets.length || grand === 0) {
    svg.append(
      s("text", { x: M.left + plotW / 2, y: M.top + plotH / 2, "text-anchor": "middle", class: "empty" }, "No sessions in this range"),
    );
  }

  const n = Math.max(1, buckets.length);
  const slot = plotW / n;
  const barW = Math.max(2, Math.min(48, slot * 0.78));
  const bars = s("g", { class: "chart-bars" });
  buckets.forEach((b, i) => {
    const x = M.left + i * slot + (slot - barW) / 2;
    let acc = 0;
    const when = `${utcText(b.start, { seconds: false })} UTC`;
    for (const ser of series) {
      const v = Number((b.counts || {})[ser.key] || 0);
      if (!v) continue;
      const y0 = y(acc);
      const y1 = y(acc + v);
      acc += v;
      bars.append(
        s(
          "rect",
          { x, y: y1, width: barW, height: Math.max(0.5, y0 - y1), fill: ser.color, class: "bar" },
          s("title", null, `${when}, ${ser.key}: ${v}`),
        ),
      );
    }
  });
  svg.append(bars);

  // Time axis labels: at most ~8, evenly spaced.
  const every = Math.max(1, Math.ceil(buckets.length / 8));
  const xaxis = s("g", { class: "chart-xaxis", "aria-hidden": "true" });
  let prev = null;
  buckets.forEach((b, i) => {
    if (i % every !== 0) return;
    xaxis.append(
      s("text", { x: M.left + i * slot + slot / 2, y: H - M.bottom + 18, "text-anchor": "middle", class: "tick" }, axisLabel(b.start, bucketSecs, prev)),
    );
    prev = b.start;
  });
  xaxis.append(s("text", { x: M.left + plotW / 2, y: H - 4, "text-anchor": "middle", class: "axis-title" }, `Time (UTC), one bar per ${per}`));
  svg.append(xaxis);

  const legend = h(
    "ul",
    { class: "legend", "aria-label": `Legend: colours by ${by}` },
    series.map((ser) => {
      const swatch = h("span", { class: "swatch", "aria-hidden": "true" });
      swatch.style.backgroundColor = ser.color;
      return h("li", null, swatch, h("span", { class: "legend-key" }, ser.key), h("span", { class: "legend-count" }, ` ${ser.total}`));
    }),
  );

  const table = h(
    "table",
    { class: "data-table compact" },
    h("caption", null, `Sessions per ${per} by ${by} (UTC)`),
    h(
      "thead",
      null,
      h("tr", null, h("th", { scope: "col" }, "Start (UTC)"), series.map((ser) => h("th", { scope: "col" }, ser.key)), h("th", { scope: "col" }, "Total")),
    ),
    h(
      "tbody",
      null,
      buckets.map((b, i) =>
        h(
          "tr",
          null,
          h("th", { scope: "row" }, utcText(b.start, { seconds: false })),
          series.map((ser) => h("td", { class: "num" }, String(Number((b.counts || {})[ser.key] || 0)))),
          h("td", { class: "num" }, String(totals[i])),
        ),
      ),
    ),
  );

  return { svg, legend, table };
}
