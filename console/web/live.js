// #/live : the daemon's active sessions, with a confirmed kill.
import { api } from "./api.js";
import { h, fill, setAlert, uniqueId, visible } from "./dom.js";
import { timeEl, durationText, elapsedMs, bytesEl, utcText } from "./format.js";
import { sessionHref } from "./list.js";

export function liveView(root) {
  const errorEl = h("div", { class: "alert", role: "alert", hidden: true });
  const statusEl = h("p", { class: "status-line", role: "status" });
  const unavailable = h("p", { class: "notice", "data-testid": "live-unavailable", hidden: true });
  const updated = h("span", { class: "muted" });
  const refreshBtn = h("button", { type: "button", class: "button-quiet" }, "Refresh");
  const tbody = h("tbody");
  const table = h(
    "table",
    { class: "data-table", "data-testid": "live-table" },
    h("caption", { class: "visually-hidden" }, "Active sessions. Times are UTC."),
    h(
      "thead",
      null,
      h(
        "tr",
        null,
        ["Session", "Started (UTC)", "User", "Device", "Destination", "Login", "Running for"].map((t) => h("th", { scope: "col" }, t)),
        h("th", { scope: "col", class: "num" }, h("abbr", { title: "Bytes from the client" }, "Sent")),
        h("th", { scope: "col", class: "num" }, h("abbr", { title: "Bytes from the server" }, "Received")),
        h("th", { scope: "col" }, h("span", { class: "visually-hidden" }, "Actions")),
      ),
    ),
    tbody,
  );
  const tableWrap = h("div", { class: "table-wrap", tabindex: "0", role: "region", "aria-label": "Live sessions table (scrolls)" }, table);

  // The confirmation dialog: modal, focus on Cancel, Esc closes (the dialog's own cancel).
  const dTitle = uniqueId("kill-title");
  const dDesc = uniqueId("kill-desc");
  const dText = h("p", { id: dDesc });
  const dError = h("div", { class: "alert", role: "alert", hidden: true });
  const killBtn = h("button", { type: "button", class: "button-danger" }, "Kill session");
  const cancelBtn = h("button", { type: "button", class: "button-quiet" }, "Cancel");
  const dialog = h(
    "dialog",
    { class: "confirm", "aria-labelledby": dTitle, "aria-describedby": dDesc },
    h("h2", { id: dTitle }, "Kill this session?"),
    dText,
    h("p", { class: "hint" }, "The connection is closed at once. The daemon logs the kill as an admin action."),
    dError,
    h("div", { class: "dialog-actions" }, cancelBtn, killBtn),
  );
  let target = null;
  let opener = null;

  root.append(
    h("div", { class: "title-row" }, h("h1", { tabindex: "-1" }, "Live sessions"), h("div", { class: "title-tools" }, updated, refreshBtn)),
    errorEl,
    statusEl,
    unavailable,
    tableWrap,
    dialog,
  );

  function who(x) {
    return x.email || x.login || "an unidentified user";
  }

  function openKill(x, button) {
    target = x;
    opener = button;
    fill(
      dText,
      "Kill session ",
      h("code", null, x.id),
      " of ",
      h("strong", null, who(x)),
      " to ",
      h("strong", { class: "mono" }, x.destination || "?"),
      x.login && x.email ? [" as ", h("strong", null, x.login)] : null,
      ", started ",
      `${utcText(x.started_at)} UTC`,
      "?",
    );
    setAlert(dError, "");
    killBtn.disabled = false;
    cancelBtn.disabled = false;
    killBtn.textContent = "Kill session";
    dialog.showModal();
    cancelBtn.focus();
  }

  function closeDialog() {
    if (dialog.open) dialog.close();
  }

  dialog.addEventListener("close", () => {
    target = null;
    if (opener && opener.isConnected) opener.focus();
    opener = null;
  });
  dialog.addEventListener("cancel", (ev) => {
    if (killBtn.disabled) ev.preventDefault(); // a kill is in flight: wait for its answer
  });
  cancelBtn.addEventListener("click", closeDialog);
  killBtn.addEventListener("click", async () => {
    if (!target) return;
    const x = target;
    killBtn.disabled = true;
    cancelBtn.disabled = true;
    killBtn.textContent = "Killing…";
    try {
      const res = await api(`sessions/${encodeURIComponent(x.id)}/kill`, { method: "POST" });
      opener = null;
      closeDialog();
      statusEl.textContent = visible(`Session ${res && res.killed ? res.killed : x.id} (${who(x)} to ${x.destination}) was killed.`);
      refreshBtn.focus();
      await untilGone(x.id);
    } catch (e) {
      setAlert(dError, `Could not kill the session: ${e.message}`);
      killBtn.disabled = false;
      cancelBtn.disabled = false;
      killBtn.textContent = "Kill session";
      cancelBtn.focus();
    }
  });

  function row(x) {
    const idCell = h("td", { id: uniqueId("live-id") }, h("a", { href: sessionHref(x), class: "mono" }, x.id));
    const kill = h("button", { type: "button", class: "button-danger small", "aria-describedby": idCell.id }, "Kill");
    kill.addEventListener("click", () => openKill(x, kill));
    return h(
      "tr",
      { "data-session-id": x.id },
      idCell,
      h("td", { class: "nowrap" }, timeEl(x.started_at)),
      h("td", { class: "clip clip-user", title: x.email || null }, x.email || h("span", { class: "muted" }, "—")),
      h("td", { class: "clip clip-device mono", title: x.device_id || null }, x.device_id || h("span", { class: "muted" }, "—")),
      h("td", { class: "clip clip-dest mono", title: x.destination || null }, x.destination || "—"),
      h("td", null, x.login || h("span", { class: "muted" }, "—")),
      h("td", { class: "num nowrap" }, durationText(elapsedMs(x.started_at))),
      h("td", { class: "num nowrap" }, bytesEl(x.bytes_from_client)),
      h("td", { class: "num nowrap" }, bytesEl(x.bytes_from_server)),
      h("td", null, kill),
    );
  }

  // The daemon closes a killed session a moment after it answers: reload until it is gone
  // (at most about 5 s), so the row does not linger.
  let shown = [];
  async function untilGone(id) {
    for (let i = 0; i < 20; i++) {
      await load();
      if (!shown.includes(id)) return;
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
  }

  // Sessions come and go: reload every 10 s while no kill dialog is open.
  const timer = setInterval(() => {
    if (!dialog.open) load();
  }, 10000);

  let seq = 0;
  async function load() {
    const mine = ++seq;
    table.setAttribute("aria-busy", "true");
    try {
      const data = await api("live");
      if (mine !== seq) return;
      setAlert(errorEl, "");
      const sessions = Array.isArray(data.sessions) ? data.sessions : [];
      if (data.available === false) {
        unavailable.hidden = false;
        unavailable.textContent = visible(`Live sessions are not available: ${data.reason || "no reason given"}.`);
        tableWrap.hidden = true;
      } else {
        unavailable.hidden = true;
        tableWrap.hidden = false;
      }
      tbody.replaceChildren(...sessions.map(row));
      shown = sessions.map((x) => x.id);
      if (!sessions.length) tbody.append(h("tr", { class: "empty-row" }, h("td", { colspan: 10 }, "No active sessions.")));
      updated.textContent = `Updated ${utcText(new Date().toISOString())} UTC`;
    } catch (e) {
      if (mine !== seq) return;
      setAlert(errorEl, `Could not load live sessions: ${e.message}`);
    } finally {
      table.removeAttribute("aria-busy");
    }
  }

  refreshBtn.addEventListener("click", () => {
    statusEl.textContent = "";
    load();
  });
  load();

  return {
    title: "Live sessions",
    dispose() {
      clearInterval(timer);
      closeDialog();
    },
  };
}
