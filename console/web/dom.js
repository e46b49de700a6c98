// Small DOM helpers. Server text only ever reaches the page as text nodes or attribute
// values set with setAttribute: never through innerHTML.

const SVG_NS = "http://www.w3.org/2000/svg";

// Control, bidirectional and invisible format characters in text the audited user
// controls (file names, logins, commands) could make it read as something else
// ("invoice\u202Eexe.pdf" shows as "invoicefdp.exe"; a newline fakes a second line). Every
// text the page shows has them as visible escapes instead.
const HIDDEN = /[\u0000-\u001f\u007f-\u009f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]/g;
// The same, less newline, carriage return and tab: for program output shown as lines.
const HIDDEN_IN_LINES = /[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]/g;

function escapeChar(c) {
  return `⟨U+${c.codePointAt(0).toString(16).toUpperCase().padStart(4, "0")}⟩`;
}

/** The text with control and format characters shown as ⟨U+XXXX⟩. */
export function visible(text) {
  return String(text).replace(HIDDEN, escapeChar);
}

/** A text node of program output: line breaks and tabs kept, the rest escaped. */
export function lines(text) {
  return document.createTextNode(String(text).replace(HIDDEN_IN_LINES, escapeChar));
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(visible(child)));
  }
}

function setAttrs(el, attrs) {
  if (!attrs) return;
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2), value);
    } else if (name === "hidden" || name === "disabled" || name === "checked") {
      el[name] = Boolean(value);
    } else {
      el.setAttribute(name, value === true ? "" : visible(value));
    }
  }
}

/** An HTML element: h("td", { class: "num" }, "3", child...). */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

/** Replaces an element's children; like h(), flattens arrays and skips null/false. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** An SVG element, same shape as h(). */
export function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

/** Shows `message` in an alert element, or hides it when the message is empty. */
export function setAlert(el, message) {
  el.textContent = message ? visible(message) : "";
  el.hidden = !message;
}

let uid = 0;
/** A page-unique id for label/aria wiring. */
export function uniqueId(prefix) {
  uid += 1;
  return `${prefix}-${uid}`;
}

/** Saves bytes or text as a file via a temporary object URL and <a download>. */
export function saveFile(data, filename, type) {
  const url = URL.createObjectURL(new Blob([data], { type }));
  const a = h("a", { href: url, download: filename, hidden: true });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 30_000);
}
