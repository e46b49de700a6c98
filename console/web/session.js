// #/sessions/ID?router=R : one session, its channels (replay, text, downloads) and its
// file-operation timeline. Recordings are fetched encrypted and decrypted in the page.
import { api, withQuery } from "./api.js";
import { h, lines, setAlert, uniqueId, saveFile } from "./dom.js";
import { timeEl, durationText, elapsedMs, bytesEl, bytesText } from "./format.js";
import { hasKey, decrypt, onKeyChange } from "./keystore.js";

const SPEEDS = [
  ["0.5", "0.5×"],
  ["1", "1×"],
  ["2", "2×"],
  ["4", "4×"],
];
const IDLE_LIMIT_SECS = 2;

const ERROR_TITLES = {
  no_key: "No key loaded",
  bad_key: "Not a recording private key",
  wrong_key: "Wrong key",
  tampered: "Tampered recording",
  not_a_recording: "Not a recording",
  too_large: "Recording too large",
  truncated: "Incomplete recording",
  fetch: "Download failed",
  reader: "Recording reader error",
  player: "Player error",
};

function dash(v) {
  return v === null || v === undefined || v === "" ? h("span", { class: "muted" }, "—") : String(v);
}

function fact(label, value, cls) {
  return h("div", { class: `fact ${cls || ""}` }, h("dt", null, label), h("dd", null, value));
}

function safeName(text) {
  return String(text).replace(/[^A-Za-z0-9._-]+/g, "_");
}

function detailList(x) {
  const active = !x.ended_at && !x.close_reason && x.decision !== "block";
  const duration =
    x.duration_ms !== null && x.duration_ms !== undefined
      ? durationText(x.duration_ms)
      : active
        ? `${durationText(elapsedMs(x.started_at))} so far`
        : "—";
  const policy = x.policy_name || x.policy_id ? [x.policy_name || "(unnamed)", x.policy_id ? h("span", { class: "muted" }, ` (id ${x.policy_id})`) : null] : dash(null);
  return h(
    "dl",
    { class: "facts", "data-testid": "session-detail" },
    fact("Who", dash(x.email)),
    fact("Device", x.device_id ? h("span", { class: "mono" }, x.device_id) : dash(null)),
    fact("Source", h("span", { class: "mono" }, x.source || "—")),
    fact("Destination", h("span", { class: "mono" }, x.destination || "—")),
    fact("Login", dash(x.login)),
    fact("Policy", policy),
    fact("Decision", dash(x.decision)),
    fact("Started", timeEl(x.started_at, { suffix: true })),
    fact("Ended", x.ended_at ? timeEl(x.ended_at, { suffix: true }) : h("span", { class: active ? "badge badge-active" : "muted" }, active ? "still active" : "—")),
    fact("Duration", duration),
    fact("Bytes from client", bytesEl(x.bytes_from_client)),
    fact("Bytes from server", bytesEl(x.bytes_from_server)),
    fact("Close reason", dash(x.close_reason)),
    fact("Router", x.router_id ? h("span", { class: "mono" }, x.router_id) : h("span", { class: "muted" }, "this router")),
    fact("Certificate serial", x.cert_serial ? h("span", { class: "mono" }, x.cert_serial) : dash(null)),
    fact("Upstream host key", x.upstream_host_key ? h("span", { class: "mono wrap" }, x.upstream_host_key) : dash(null), "wide"),
  );
}

function fileOpItem(op) {
  const bytes = [];
  if (Number(op.bytes_written)) bytes.push(`written ${bytesText(op.bytes_written)}`);
  if (Number(op.bytes_read)) bytes.push(`read ${bytesText(op.bytes_read)}`);
  const ok = op.status === "ok";
  return h(
    "li",
    { class: op.denied ? "denied" : ok ? "" : "failed", "data-op": op.op },
    h("span", { class: "op-time" }, timeEl(op.at)),
    h("span", { class: "op-chan" }, h("span", { class: "visually-hidden" }, "channel "), `ch ${op.channel}`),
    h("span", { class: "op-proto" }, String(op.protocol || "")),
    h("strong", { class: "op-name" }, String(op.op || "")),
    h(
      "span",
      { class: "op-path" },
      h("code", null, String(op.path ?? "")),
      op.target ? [" → ", h("code", null, String(op.target))] : null,
      op.flags ? h("span", { class: "muted" }, ` (${op.flags})`) : null,
    ),
    h("span", { class: "op-bytes" }, bytes.length ? bytes.join(", ") : h("span", { class: "muted" }, "—")),
    h(
      "span",
      { class: "op-status" },
      op.denied ? h("span", { class: "badge badge-denied" }, "DENIED") : null,
      op.denied ? " " : null,
      h("span", { class: ok ? "status-ok" : "status-bad" }, String(op.status ?? "")),
    ),
  );
}

/** Speed / idle-skip controls and an asciinema-player; recreated when an option changes. */
function playerPanel(cast, label) {
  const speedId = uniqueId("speed");
  const idleId = uniqueId("idle");
  const speed = h("select", { id: speedId }, SPEEDS.map(([v, t]) => h("option", { value: v, selected: v === "1" ? true : null }, t)));
  const idle = h("input", { type: "checkbox", id: idleId, checked: true });
  const box = h("div", { class: "player", "data-testid": "player", role: "region", "aria-label": label });
  const problem = h("div", { class: "alert", role: "alert", hidden: true });
  let player = null;
  let playing = true;

  // The player reports some failures only later, as errors of the page (a terminal too
  // large to draw, for one): shown here instead of a silently blank player.
  function failed(ev) {
    if (!player) return;
    const reason = ev.reason || ev.error || ev.message || "unknown error";
    setAlert(problem, `The player failed: ${reason.message || reason}`);
  }
  window.addEventListener("error", failed);
  window.addEventListener("unhandledrejection", failed);

  function create(startAt) {
    if (player) player.dispose();
    player = null;
    box.replaceChildren();
    if (!window.AsciinemaPlayer || typeof window.AsciinemaPlayer.create !== "function") {
      setAlert(problem, "The player (/vendor/asciinema-player.min.js) did not load.");
      return;
    }
    try {
      player = window.AsciinemaPlayer.create({ data: cast }, box, {
        speed: Number(speed.value),
        idleTimeLimit: idle.checked ? IDLE_LIMIT_SECS : undefined,
        controls: true,
        fit: "both",
        autoPlay: playing,
        preload: true,
        startAt: startAt || undefined,
      });
      player.addEventListener("play", () => (playing = true));
      player.addEventListener("pause", () => (playing = false));
      player.addEventListener("ended", () => (playing = false));
      setAlert(problem, "");
    } catch (e) {
      setAlert(problem, `The player could not start: ${e.message || e}`);
    }
  }

  function recreate() {
    let at = 0;
    try {
      at = player ? player.getCurrentTime() || 0 : 0;
    } catch {
      at = 0;
    }
    create(at);
  }
  speed.addEventListener("change", recreate);
  idle.addEventListener("change", recreate);

  const el = h(
    "div",
    { class: "player-panel" },
    h(
      "div",
      { class: "player-controls" },
      h("div", { class: "inline-field" }, h("label", { for: speedId }, "Speed"), speed),
      h("div", { class: "check" }, idle, h("label", { for: idleId }, `Skip idle time (pauses over ${IDLE_LIMIT_SECS} s)`)),
      h("span", { class: "hint" }, "Seek with the player's progress bar, or ← / → when it has focus."),
    ),
    problem,
    box,
  );
  // Created once the panel is in the document, so the player can measure its box.
  return {
    el,
    start: () => create(0),
    dispose: () => {
      window.removeEventListener("error", failed);
      window.removeEventListener("unhandledrejection", failed);
      if (player) player.dispose();
    },
  };
}

function textPanel(text) {
  const output = text.output || "";
  const input = text.input || "";
  return h(
    "div",
    { class: "text-panel" },
    h("h4", null, "Output"),
    output ? null : h("p", { class: "muted" }, "(no output)"),
    h("pre", { "data-testid": "channel-text", class: "channel-text", tabindex: "0" }, lines(output)),
    input
      ? h(
          "details",
          { open: true },
          h("summary", null, `Input from the client (${bytesText(new TextEncoder().encode(input).length)})`),
          h("pre", { "data-testid": "channel-input", class: "channel-text", tabindex: "0" }, lines(input)),
        )
      : h("p", { class: "muted" }, "No input from the client was recorded."),
  );
}

export function sessionView(root, id, params) {
  const router = params.get("router") || "";
  const query = router ? { router } : {};
  const idPath = encodeURIComponent(id);
  const bytesCache = new Map(); // channel -> Promise<Uint8Array>
  const resultCache = new Map(); // channel -> Promise<decrypt result>, dropped on key change
  const channelUis = [];
  let openPanel = null;
  let openSeq = 0; // a viewer whose decryption finishes after a newer action is dropped

  const errorEl = h("div", { class: "alert", role: "alert", hidden: true });
  const body = h("div", { class: "session-body", "aria-busy": "true" }, h("p", { class: "muted" }, "Loading…"));
  root.append(
    h("p", { class: "breadcrumb" }, h("a", { href: "#/" }, "← Back to the session list")),
    h("h1", { tabindex: "-1" }, "Session ", h("span", { class: "mono" }, id), router ? h("span", { class: "muted small" }, ` on router ${router}`) : null),
    errorEl,
    body,
  );

  function closeViewers() {
    openSeq += 1;
    if (openPanel) openPanel.dispose();
    openPanel = null;
    for (const ui of channelUis) {
      ui.viewer.replaceChildren();
      ui.alert.replaceChildren();
    }
  }

  const unsubscribe = onKeyChange(() => {
    resultCache.clear();
    closeViewers();
  });

  function recordingBytes(n) {
    if (!bytesCache.has(n)) {
      const p = api(withQuery(`sessions/${idPath}/channels/${encodeURIComponent(n)}/recording`, query), { bytes: true });
      p.catch(() => bytesCache.delete(n));
      bytesCache.set(n, p);
    }
    return bytesCache.get(n);
  }

  async function decrypted(n) {
    const bytes = await recordingBytes(n);
    if (!resultCache.has(n)) resultCache.set(n, decrypt(bytes));
    const res = await resultCache.get(n);
    if (!res || !res.ok) resultCache.delete(n); // retry with the next key
    return res;
  }

  function showError(ui, cls, message) {
    const title = ERROR_TITLES[cls] || "Recording error";
    // The reader's messages often name their cause already ("wrong key: …").
    const named = String(message).toLowerCase().startsWith(title.toLowerCase());
    ui.alert.replaceChildren(
      h(
        "div",
        { class: `alert alert-${cls}`, role: "alert", "data-testid": "recording-error", "data-error-class": cls },
        named ? null : h("strong", null, `${title}: `),
        String(message),
      ),
    );
  }

  async function open(ui) {
    closeViewers();
    const mine = openSeq;
    const n = ui.ch.channel;
    if (!hasKey()) {
      showError(ui, "no_key", "Load the recording private key first (“Recording private key” at the top, or drop the key file on the page).");
      return;
    }
    ui.viewer.replaceChildren(h("p", { class: "muted", role: "status" }, "Fetching and verifying the recording…"));
    let res;
    try {
      res = await decrypted(n);
    } catch (e) {
      if (mine !== openSeq) return;
      ui.viewer.replaceChildren();
      showError(ui, "fetch", e.message);
      return;
    }
    if (mine !== openSeq) return;
    ui.viewer.replaceChildren();
    if (!res.ok) {
      showError(ui, res.class || "reader", res.error || "The recording could not be read.");
      return;
    }
    if (res.end && res.end.complete === false) {
      showError(ui, "truncated", res.end.message || "the recording ends early; what follows is verified up to there");
    }
    if (res.pty || !res.text) {
      const panel = playerPanel(res.cast, `Replay of channel ${n}`);
      ui.viewer.append(panel.el);
      openPanel = panel;
      panel.start();
    } else {
      ui.viewer.append(textPanel(res.text));
    }
    ui.el.scrollIntoView({ block: "start" });
  }

  async function downloadEncrypted(ui) {
    ui.alert.replaceChildren();
    try {
      const bytes = await recordingBytes(ui.ch.channel);
      saveFile(bytes, `${safeName(id)}-ch${ui.ch.channel}.sshlog`, "application/octet-stream");
    } catch (e) {
      showError(ui, "fetch", e.message);
    }
  }

  async function downloadCast(ui) {
    ui.alert.replaceChildren();
    if (!hasKey()) {
      showError(ui, "no_key", "Load the recording private key first: the asciicast is decrypted in this page.");
      return;
    }
    let res;
    try {
      res = await decrypted(ui.ch.channel);
    } catch (e) {
      showError(ui, "fetch", e.message);
      return;
    }
    if (!res.ok) {
      showError(ui, res.class || "reader", res.error || "The recording could not be read.");
      return;
    }
    if (res.end && res.end.complete === false) {
      showError(ui, "truncated", `${res.end.message || "the recording ends early"} (the asciicast holds what was verified)`);
    }
    saveFile(res.cast, `${safeName(id)}-ch${ui.ch.channel}.cast`, "application/x-asciicast");
  }

  function channelSection(ch) {
    const headingId = uniqueId("ch");
    const ui = { ch, alert: h("div", { class: "alert-slot" }), viewer: h("div", { class: "viewer" }), el: null };
    const pty = ch.kind === "shell";
    const exit = ch.exit_signal ? `signal ${ch.exit_signal}` : ch.exit_status !== null && ch.exit_status !== undefined ? `status ${ch.exit_status}` : null;
    const actions = h("div", { class: "actions" });
    if (ch.has_recording) {
      actions.append(
        h("button", { type: "button", onclick: () => open(ui) }, pty ? "Replay" : "Show text"),
        h("button", { type: "button", class: "button-quiet", onclick: () => downloadEncrypted(ui) }, "Download encrypted"),
        h("button", { type: "button", class: "button-quiet", onclick: () => downloadCast(ui) }, "Download asciicast"),
      );
    } else {
      actions.append(h("p", { class: "muted" }, "No recording for this channel."));
    }
    const section = h(
      "article",
      { class: "card channel", "data-testid": "channel", "data-channel": String(ch.channel), "aria-labelledby": headingId },
      h("h3", { id: headingId }, `Channel ${ch.channel}: ${ch.kind}`, ch.command ? [" ", h("code", null, ch.command)] : null),
      h(
        "p",
        { class: "meta" },
        "Started ",
        timeEl(ch.started_at, { suffix: true }),
        ch.ended_at ? [" · ended ", timeEl(ch.ended_at, { suffix: true }), " · ", durationText(elapsedMs(ch.started_at, ch.ended_at))] : " · still running",
        exit ? ` · exit ${exit}` : null,
      ),
      actions,
      ui.alert,
      ui.viewer,
    );
    ui.el = section;
    channelUis.push(ui);
    return section;
  }

  function render(x) {
    const channels = Array.isArray(x.channels) ? x.channels : [];
    const ops = Array.isArray(x.file_ops) ? x.file_ops : [];
    const chH = uniqueId("channels-h");
    const opsH = uniqueId("ops-h");
    body.replaceChildren(
      detailList(x),
      h(
        "section",
        { "aria-labelledby": chH, class: "channels" },
        h("h2", { id: chH }, `Channels (${channels.length})`),
        channels.length ? channels.map(channelSection) : h("p", { class: "muted" }, "This session opened no channel."),
      ),
      h(
        "section",
        { "aria-labelledby": opsH, class: "file-ops" },
        h("h2", { id: opsH }, `File operations (${ops.length})`),
        ops.length
          ? h(
              "div",
              { class: "ops-head", "aria-hidden": "true" },
              ["Time (UTC)", "Channel", "Protocol", "Operation", "Path", "Bytes", "Status"].map((t) => h("span", null, t)),
            )
          : h("p", { class: "muted" }, "No file operations in this session."),
        h("ol", { class: "timeline", "data-testid": "file-ops" }, ops.map(fileOpItem)),
      ),
    );
    body.removeAttribute("aria-busy");
  }

  (async () => {
    try {
      const x = await api(withQuery(`sessions/${idPath}`, query));
      render(x);
    } catch (e) {
      body.replaceChildren();
      body.removeAttribute("aria-busy");
      setAlert(errorEl, e.status === 404 ? `No such session: ${e.message}` : `Could not load the session: ${e.message}`);
    }
  })();

  return {
    title: `Session ${id}`,
    dispose() {
      unsubscribe();
      closeViewers();
      resultCache.clear();
      bytesCache.clear();
    },
  };
}
