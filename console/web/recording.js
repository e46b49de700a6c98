// The recording reader for the page: sshgw's own Rust reader (crate sshgw-console-wasm)
// compiled to WebAssembly. This file only moves bytes in and out of the module's memory;
// every byte of the format is parsed, verified and decrypted in Rust.
//
// The key text passed in is copied into the module, which zeroes its copy after use. It is
// never stored, logged or sent anywhere by this file.

let wasm = null;

// The reader's own limit (MAX_RECORDING_BYTES in console-wasm): larger recordings are not
// copied into the module at all.
const MAX_RECORDING_BYTES = 256 * 1024 * 1024;

/** Loads /recording.wasm once. */
export async function init() {
  if (wasm) return;
  const response = await fetch("recording.wasm", { credentials: "same-origin" });
  if (!response.ok) {
    throw new Error(`cannot load the recording reader (recording.wasm): HTTP ${response.status}`);
  }
  const { instance } = await WebAssembly.instantiate(await response.arrayBuffer(), {});
  wasm = instance.exports;
}

function loaded() {
  if (!wasm) throw new Error("recording reader not loaded: call init() first");
  return wasm;
}

/** Copies bytes into a buffer the module owns; returns [ptr, len]. */
function put(bytes) {
  const w = loaded();
  const ptr = w.sshgw_alloc(bytes.length);
  new Uint8Array(w.memory.buffer, ptr, bytes.length).set(bytes);
  return [ptr, bytes.length];
}

/** Reads and frees (zeroed) a result buffer: 4 bytes little-endian length, then JSON. */
function take(ptr) {
  const w = loaded();
  const len = new DataView(w.memory.buffer, ptr, 4).getUint32(0, true);
  try {
    const json = new TextDecoder().decode(new Uint8Array(w.memory.buffer, ptr + 4, len));
    return JSON.parse(json);
  } catch (e) {
    // The browser's string limit (about 512 Mi characters in Chromium).
    return {
      ok: false,
      class: "too_large",
      error: `the decrypted recording is too large for the page (${e.message}): fetch it on a workstation and use \`sshgw recording export\``,
    };
  } finally {
    w.sshgw_free(ptr, 4 + len);
  }
}

/**
 * Drops the module and with it all of its memory (which never shrinks and may still hold
 * key bytes or decrypted sessions in freed space); the next call of init() starts afresh.
 */
export function reset() {
  wasm = null;
}

/**
 * The public half of a private key file's text:
 * { ok: true, public_key } or { ok: false, class: "bad_key", error }.
 */
export function keyInfo(keyText) {
  const [kp, kl] = putKey(keyText);
  return take(loaded().sshgw_key_info(kp, kl));
}

/** Copies the key text into the module and zeroes the encoded copy made on the way. */
function putKey(keyText) {
  const bytes = new TextEncoder().encode(keyText);
  try {
    return put(bytes);
  } finally {
    bytes.fill(0);
  }
}

/**
 * Decrypts and verifies a whole recording (a Uint8Array of the encrypted file):
 * { ok: true, pty, cast, text: {output, input} | null, end: {complete, message}, meta }
 * or { ok: false, class, error } with class bad_key, wrong_key, tampered, truncated,
 * not_a_recording or too_large.
 */
export function decryptRecording(keyText, bytes) {
  if (bytes.length > MAX_RECORDING_BYTES) {
    return {
      ok: false,
      class: "too_large",
      error: `the recording has ${Math.floor(bytes.length / 1048576)} MiB, more than the 256 MiB the page decrypts: fetch it on a workstation and use \`sshgw recording export\``,
    };
  }
  const [kp, kl] = putKey(keyText);
  let rp;
  let rl;
  try {
    [rp, rl] = put(bytes);
  } catch (e) {
    loaded().sshgw_free(kp, kl);
    return {
      ok: false,
      class: "too_large",
      error: `the recording (${bytes.length} bytes) does not fit in the page's memory: fetch it on a workstation and use \`sshgw recording export\``,
    };
  }
  return take(loaded().sshgw_decrypt(kp, kl, rp, rl));
}
