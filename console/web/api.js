// The JSON API client. Every request carries the access token as a bearer header and
// nothing else of the auditor's: the recording key never goes through here.

const TOKEN_KEY = "sshgw-console-token";

let token = readStoredToken();
let onUnauthorized = () => {};

function readStoredToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY);
  } catch {
    return null;
  }
}

export function getToken() {
  return token;
}

export function setToken(value) {
  token = value || null;
  try {
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    // Storage refused (private mode): the token lives for this page only.
  }
}

/** Called with the server's message when it answers 401; the token is dropped first. */
export function setUnauthorizedHandler(fn) {
  onUnauthorized = fn;
}

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.name = "ApiError";
    this.status = status;
  }
}

async function errorMessage(res) {
  let text = "";
  try {
    text = await res.text();
    const body = JSON.parse(text);
    if (body && typeof body.error === "string" && body.error) return body.error;
  } catch {
    // Not JSON: fall through to the status line.
  }
  const status = `${res.status}${res.statusText ? ` ${res.statusText}` : ""}`;
  return text && text.length < 300 ? `${status}: ${text}` : `the server answered ${status}`;
}

/** Builds "sessions?user=a&limit=200" from a path and an object or URLSearchParams. */
export function withQuery(path, query) {
  const params = new URLSearchParams();
  const entries = query instanceof URLSearchParams ? query.entries() : Object.entries(query || {});
  for (const [k, v] of entries) {
    if (v !== null && v !== undefined && v !== "") params.append(k, String(v));
  }
  const qs = params.toString();
  return qs ? `${path}?${qs}` : path;
}

/**
 * Calls /api/v1/<path>. Resolves to the parsed JSON, or to a Uint8Array with `bytes: true`.
 * Rejects with ApiError carrying the server's {"error"} text.
 */
export async function api(path, { method = "GET", bytes = false } = {}) {
  const headers = { Accept: bytes ? "application/octet-stream" : "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  let res;
  try {
    // same-origin, not omit: a TLS client certificate ([console] client_ca) is a credential
    // the browser must present. The console sets no cookies.
    res = await fetch(`/api/v1/${path}`, { method, headers, cache: "no-store", credentials: "same-origin" });
  } catch (e) {
    throw new ApiError(0, `The console server cannot be reached (${e.message}).`);
  }
  if (res.status === 401) {
    const message = await errorMessage(res);
    setToken(null);
    onUnauthorized(message);
    throw new ApiError(401, message);
  }
  if (!res.ok) throw new ApiError(res.status, await errorMessage(res));
  if (bytes) return new Uint8Array(await res.arrayBuffer());
  try {
    return await res.json();
  } catch {
    throw new ApiError(res.status, "The server sent an answer that is not JSON.");
  }
}
