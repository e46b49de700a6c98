// Human-readable times (always UTC), durations and byte counts.
import { h } from "./dom.js";

function parse(value) {
  if (value === null || value === undefined || value === "") return null;
  const d = new Date(value);
  return Number.isNaN(d.getTime()) ? null : d;
}

/** "2026-12-05 10:00:03" (UTC), or the input as given if it is not a time. */
export function utcText(value, { seconds = true } = {}) {
  const d = parse(value);
  if (!d) return value ? String(value) : "—";
  const iso = d.toISOString(); // 2026-12-05T10:00:03.123Z
  return `${iso.slice(0, 10)} ${iso.slice(11, seconds ? 19 : 16)}`;
}

/** A <time> element showing the UTC time; `suffix` adds " UTC". */
export function timeEl(value, { suffix = false, seconds = true } = {}) {
  const d = parse(value);
  if (!d) return h("span", { class: "muted" }, value ? String(value) : "—");
  const text = utcText(value, { seconds }) + (suffix ? " UTC" : "");
  return h("time", { datetime: d.toISOString() }, text);
}

/** 850 ms, 12 s, 3 min 4 s, 2 h 5 min, 3 d 4 h. */
export function durationText(ms) {
  if (ms === null || ms === undefined || !Number.isFinite(Number(ms))) return "—";
  ms = Number(ms);
  if (ms < 1000) return `${Math.round(ms)} ms`;
  let secs = Math.floor(ms / 1000);
  if (secs < 60) return `${(ms / 1000).toFixed(secs < 10 ? 1 : 0)} s`;
  const d = Math.floor(secs / 86400);
  secs -= d * 86400;
  const hr = Math.floor(secs / 3600);
  secs -= hr * 3600;
  const min = Math.floor(secs / 60);
  secs -= min * 60;
  if (d) return `${d} d ${hr} h`;
  if (hr) return `${hr} h ${min} min`;
  return `${min} min ${secs} s`;
}

/** Milliseconds between two times, or from `start` to now when `end` is empty. */
export function elapsedMs(start, end) {
  const a = parse(start);
  if (!a) return null;
  const b = parse(end) || new Date();
  return Math.max(0, b.getTime() - a.getTime());
}

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];

/** 0 B, 512 B, 1.5 KiB, 230 KiB, 12.3 MiB. */
export function bytesText(n) {
  if (n === null || n === undefined || !Number.isFinite(Number(n))) return "—";
  let v = Number(n);
  let i = 0;
  while (v >= 1024 && i < UNITS.length - 1) {
    v /= 1024;
    i += 1;
  }
  if (i === 0) return `${v} B`;
  return `${v.toFixed(v < 10 ? 1 : 0)} ${UNITS[i]}`;
}

/** A span with the human-readable size and the exact byte count as its title. */
export function bytesEl(n) {
  const exact = Number.isFinite(Number(n)) ? `${Number(n).toLocaleString("en-US")} bytes` : null;
  return h("span", { title: exact }, bytesText(n));
}

/** "1 session" would break the contract's "N sessions"; callers choose. */
export function plural(n, one, many) {
  return `${n} ${n === 1 ? one : many}`;
}
