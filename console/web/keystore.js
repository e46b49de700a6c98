// The recording private key. Its text lives in the `keyText` variable of this module and
// nowhere else: not in storage, a URL, a cookie, a request, the DOM or the console. The
// rest of the page only learns whether a key is loaded and its public key.

let keyText = null;
let publicKey = null;
let glue = null;
// The glue once loaded, so forgetting the key can reset it at once.
let loadedGlue = null;
const listeners = new Set();

// A key file is 44 characters of base64; anything much larger is some other file.
const MAX_KEY_FILE = 4096;

export class KeyError extends Error {}

/** The wasm glue (/recording.js), initialised once. */
export function recordingModule() {
  if (!glue) {
    glue = import("./recording.js")
      .then(async (mod) => {
        await mod.init();
        loadedGlue = mod;
        return mod;
      })
      .catch((e) => {
        glue = null;
        throw new Error(`The recording reader (WebAssembly) did not load: ${e.message || e}`);
      });
  }
  return glue;
}

function notify() {
  for (const fn of listeners) fn({ loaded: keyText !== null, publicKey });
}

/** fn({loaded, publicKey}) on every load and forget. Returns an unsubscribe function. */
export function onKeyChange(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

export function hasKey() {
  return keyText !== null;
}

export function getPublicKey() {
  return publicKey;
}

/** Reads a key file (from the picker or a drop). Throws KeyError with a clear message. */
export async function loadKeyFile(file) {
  if (!file) throw new KeyError("No file was given.");
  if (file.size > MAX_KEY_FILE) {
    throw new KeyError(
      `“${file.name}” is not a recording private key: a key file is 44 characters, this one is ${file.size} bytes.`,
    );
  }
  const text = await file.text();
  const mod = await recordingModule();
  let info;
  try {
    info = mod.keyInfo(text);
  } catch (e) {
    throw new KeyError(`“${file.name}” could not be read as a recording private key: ${e.message || e}`);
  }
  if (!info || !info.ok) {
    throw new KeyError(
      `“${file.name}” is not a valid recording private key: ${(info && info.error) || "unknown error"}`,
    );
  }
  keyText = text;
  publicKey = info.public_key;
  notify();
  return publicKey;
}

export function forgetKey() {
  keyText = null;
  publicKey = null;
  // A fresh WebAssembly instance next time: the old one's memory, with whatever key bytes
  // and decrypted sessions its freed space still holds, goes with it.
  if (loadedGlue) {
    loadedGlue.reset();
    loadedGlue = null;
    glue = null;
  }
  notify();
}

/**
 * Decrypts and verifies a recording in the page. Returns the glue's result object, or
 * {ok: false, class: "no_key" | "reader", error} when it cannot even start.
 */
export async function decrypt(bytes) {
  if (keyText === null) {
    return { ok: false, class: "no_key", error: "Load the recording private key first." };
  }
  let mod;
  try {
    mod = await recordingModule();
  } catch (e) {
    return { ok: false, class: "reader", error: e.message };
  }
  // The key may have been forgotten while the glue loaded.
  if (keyText === null) {
    return { ok: false, class: "no_key", error: "Load the recording private key first." };
  }
  try {
    return mod.decryptRecording(keyText, bytes.slice());
  } catch (e) {
    return { ok: false, class: "reader", error: `The recording reader failed: ${e.message || e}` };
  }
}
