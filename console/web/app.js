// sshgw console: entry point. Login, the header's key area, drag and drop, hash routing.
// Views: list.js (#/), session.js (#/sessions/ID?router=R), live.js (#/live).
import { api, getToken, setToken, setUnauthorizedHandler } from "./api.js";
import { h, setAlert, uniqueId } from "./dom.js";
import { loadKeyFile, forgetKey, onKeyChange, hasKey, getPublicKey } from "./keystore.js";
import { listView } from "./list.js";
import { sessionView } from "./session.js";
import { liveView } from "./live.js";

const main = document.getElementById("main");
const nav = document.getElementById("main-nav");
const keyBar = document.getElementById("key-bar");
const keyFile = document.getElementById("key-file");
const keyStatus = document.getElementById("key-status");
const keyError = document.getElementById("key-error");
const forgetBtn = document.getElementById("forget-key");
const signOutBtn = document.getElementById("sign-out");
const serverInfo = document.getElementById("server-info");
const dropOverlay = document.getElementById("drop-overlay");
const skipLink = document.getElementById("skip-link");

let current = null; // {name, view}
let signedIn = false;

// The skip link must not touch the hash: the hash is the route.
skipLink.addEventListener("click", (ev) => {
  ev.preventDefault();
  const target = main.querySelector("h1") || main;
  target.focus();
});

// ---- token from the address bar -------------------------------------------------------

/** `#token=…` signs in and is removed from the address bar (and from history). */
function takeTokenFromHash() {
  const m = /^#token=([^&]*)/.exec(location.hash);
  if (!m) return false;
  let value = m[1];
  try {
    value = decodeURIComponent(value);
  } catch {
    // keep it as it is
  }
  setToken(value.trim());
  history.replaceState(null, "", `${location.pathname}${location.search}#/`);
  return true;
}

// ---- the key area -----------------------------------------------------------------------

function showKeyError(message) {
  setAlert(keyError, message);
}

async function takeKeyFile(file) {
  showKeyError("");
  keyStatus.textContent = "Reading the key…";
  try {
    await loadKeyFile(file);
  } catch (e) {
    const had = hasKey();
    updateKeyStatus();
    let msg = e instanceof Error ? e.message : String(e);
    if (!/[.!?)]$/.test(msg)) msg += ".";
    showKeyError(had ? `${msg} The key loaded before is still in use.` : msg);
  } finally {
    keyFile.value = ""; // lets the same file be picked again; the key is not in the DOM
  }
}

function updateKeyStatus(state) {
  const loaded = state ? state.loaded : hasKey();
  const pk = state ? state.publicKey : getPublicKey();
  if (loaded) {
    const shown = pk ? `${pk.slice(0, 12)}…` : "…";
    keyStatus.textContent = `Key loaded (public key ${shown})`;
    keyStatus.title = pk ? `Public key ${pk}` : "";
    keyStatus.classList.add("loaded");
  } else {
    keyStatus.textContent = "No key loaded";
    keyStatus.title = "";
    keyStatus.classList.remove("loaded");
  }
  forgetBtn.disabled = !loaded;
}

onKeyChange((state) => {
  updateKeyStatus(state);
  if (state.loaded) showKeyError("");
});

keyFile.addEventListener("change", () => {
  const file = keyFile.files && keyFile.files[0];
  if (file) takeKeyFile(file);
});

forgetBtn.addEventListener("click", () => {
  forgetKey();
  showKeyError("");
  keyFile.focus();
});

// Drop the key file anywhere on the page. Dropping elsewhere must never make the browser
// open the file, so every drop is taken here.
let dragDepth = 0;
function hasFiles(ev) {
  return ev.dataTransfer && Array.from(ev.dataTransfer.types || []).includes("Files");
}
document.addEventListener("dragenter", (ev) => {
  if (!hasFiles(ev)) return;
  ev.preventDefault();
  dragDepth += 1;
  dropOverlay.classList.add("active");
});
document.addEventListener("dragover", (ev) => {
  if (!hasFiles(ev)) return;
  ev.preventDefault();
  ev.dataTransfer.dropEffect = "copy";
});
document.addEventListener("dragleave", (ev) => {
  if (!hasFiles(ev)) return;
  dragDepth = Math.max(0, dragDepth - 1);
  if (!dragDepth) dropOverlay.classList.remove("active");
});
document.addEventListener("drop", (ev) => {
  if (!hasFiles(ev)) return;
  ev.preventDefault();
  dragDepth = 0;
  dropOverlay.classList.remove("active");
  const files = ev.dataTransfer.files;
  if (!files || !files.length) return;
  if (files.length > 1) {
    showKeyError("Drop one file: the recording private key.");
    return;
  }
  takeKeyFile(files[0]);
});

// ---- login --------------------------------------------------------------------------

function setSignedInChrome(on) {
  signedIn = on;
  nav.hidden = !on;
  keyBar.hidden = !on;
  signOutBtn.hidden = !on;
  serverInfo.hidden = !on || !serverInfo.textContent;
}

function disposeCurrent() {
  if (current && current.view && current.view.dispose) current.view.dispose();
  current = null;
}

function showLogin(message) {
  disposeCurrent();
  // Leaving the signed-in page also drops the recording key: nothing decrypted stays
  // reachable behind the sign-in form.
  forgetKey();
  setSignedInChrome(false);
  serverInfo.textContent = "";
  document.title = "Sign in — sshgw console";
  const inputId = uniqueId("token");
  const hintId = uniqueId("token-hint");
  const input = h("input", {
    type: "password",
    id: inputId,
    autocomplete: "off",
    spellcheck: "false",
    required: true,
    "aria-describedby": hintId,
  });
  const err = h("div", { class: "alert", role: "alert", hidden: true });
  const button = h("button", { type: "submit" }, "Sign in");
  const form = h(
    "form",
    { class: "login card", "aria-labelledby": "login-title" },
    h("h1", { id: "login-title", tabindex: "-1" }, "Sign in"),
    err,
    h("div", { class: "field" }, h("label", { for: inputId }, "Access token"), input),
    h("p", { class: "hint", id: hintId }, "The token is in ", h("code", null, "console.token"), " in the gateway's state directory (0600). It is kept in this tab's session storage; the recording key never is."),
    h("div", { class: "actions" }, button),
  );
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const value = input.value.trim();
    if (!value) {
      setAlert(err, "Enter the access token.");
      input.focus();
      return;
    }
    button.disabled = true;
    setToken(value);
    try {
      await enterApp();
    } catch {
      // enterApp showed the reason
    } finally {
      button.disabled = false;
    }
  });
  main.replaceChildren(form);
  setAlert(err, message || "");
  input.focus();
}

setUnauthorizedHandler((message) => {
  showLogin(`The server refused the access token (401: ${message}). Sign in again.`);
});

signOutBtn.addEventListener("click", () => {
  setToken(null);
  showLogin("Signed out.");
});

async function enterApp() {
  let info;
  try {
    info = await api("info");
  } catch (e) {
    if (e.status === 401) throw e; // the 401 handler is showing the login page
    // The API answered otherwise: let the views show their own errors.
    info = null;
  }
  setSignedInChrome(true);
  const bits = [];
  if (info) {
    bits.push(info.source === "central" ? "central index" : "local session log");
    if (info.router_id) bits.push(`router ${info.router_id}`);
    bits.push(info.live ? "live: on" : "live: off");
    if (info.version) bits.push(`v${String(info.version).replace(/^v/, "")}`);
  }
  serverInfo.textContent = bits.join(" · ");
  serverInfo.hidden = !bits.length;
  route(false);
}

// ---- routing ------------------------------------------------------------------------

function parseHash() {
  let text = location.hash.replace(/^#/, "");
  if (!text.startsWith("/")) text = `/${text}`;
  const q = text.indexOf("?");
  const path = q < 0 ? text : text.slice(0, q);
  const params = new URLSearchParams(q < 0 ? "" : text.slice(q + 1));
  return { path, params };
}

function markNav(name) {
  for (const [id, n] of [
    ["nav-sessions", "list"],
    ["nav-live", "live"],
  ]) {
    const a = document.getElementById(id);
    if (n === name) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
}

function route(moveFocus) {
  if (!signedIn) return;
  const { path, params } = parseHash();
  let name;
  let sessionId = null;
  const m = /^\/sessions\/([^/]+)\/?$/.exec(path);
  if (path === "/" || path === "") name = "list";
  else if (path === "/live" || path === "/live/") name = "live";
  else if (m) {
    name = "session";
    try {
      sessionId = decodeURIComponent(m[1]);
    } catch {
      sessionId = m[1];
    }
  } else name = "notfound";

  if (current && current.name === "list" && name === "list" && current.view.update) {
    current.view.update(params);
    return;
  }
  disposeCurrent();
  const root = h("div", { class: `view view-${name}` });
  main.replaceChildren(root);
  let view;
  if (name === "list") view = listView(root, params);
  else if (name === "live") view = liveView(root);
  else if (name === "session") view = sessionView(root, sessionId, params);
  else {
    root.append(h("h1", { tabindex: "-1" }, "Page not found"), h("p", null, "Nothing lives at this address. ", h("a", { href: "#/" }, "Go to the session list.")));
    view = { title: "Not found" };
  }
  current = { name, view };
  markNav(name);
  document.title = `${view.title} — sshgw console`;
  if (moveFocus) {
    const h1 = root.querySelector("h1");
    if (h1) h1.focus({ preventScroll: false });
  }
}

window.addEventListener("hashchange", () => {
  if (takeTokenFromHash()) {
    enterApp().catch(() => {});
    return;
  }
  route(true);
});

// ---- start --------------------------------------------------------------------------

/**
 * Without a token: a console that takes client certificates ([console] client_ca) answers
 * the API for the certificate the browser presented, so no sign-in is needed.
 */
async function signInByCertificate() {
  let res;
  try {
    res = await fetch("/api/v1/info", { cache: "no-store", credentials: "same-origin" });
  } catch {
    res = null;
  }
  if (res && res.ok) enterApp().catch(() => {});
  else showLogin();
}

updateKeyStatus();
takeTokenFromHash();
if (getToken()) enterApp().catch(() => {});
else signInByCertificate();
