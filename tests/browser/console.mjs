// Real-browser test of `sshgw console` (issue 18, item 5): Debian's chromium, driven by
// playwright-core, against a running console whose lab sessions tests/tests/console.rs made.
//
// Usage: node console.mjs '<json>'   (or the JSON in $SSHGW_CONSOLE_TEST_INPUT)
// {
//   "url": "http://127.0.0.1:PORT/",           the console's base URL
//   "token": "…",                              <state_dir>/console.token
//   "key_file": "/…/rec",                      the recording private key (base64 X25519)
//   "public_key": "base64",                    its public key (optional: checks key-status)
//   "wrong_key_file": "/…/other",              another valid private key
//   "marker": "CONSOLE-MARKER-…",              output the good session's terminal showed
//   "sessions": {"good": ID, "truncated": ID, "tampered": ID, "sftp": ID,
//                "live": ID},                  "live": held open at its prompt; the test kills it
//   "expected_ids": [ID…],                     every session the lab made (all must be listed)
//   "user": "jdoe@example.com",                the user of every lab session
//   "destination": "203.0.113.10",             the filter that keeps good/truncated/sftp …
//   "excluded_by_destination": [ID…],          … and drops these (another destination)
//   "sftp_file": "console-upload-….bin",       the file the sftp session uploaded
//   "good_recording": "/…/ID-ch0.sshlog",      optional: "Download encrypted" must equal it
//   "artifacts_dir": "/…/target/test-artifacts/console"
// }
//
// Prints one JSON line: {"ok": true, "checks": {...}, "screenshots": [...]} or
// {"ok": false, "failed": "<check>", "error": "...", "checks": {...}} and exits 1.
// Every wait is on a condition (30 s by default); there are no fixed sleeps.

import { chromium } from 'playwright-core';
import { Buffer } from 'node:buffer';
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

const TIMEOUT = 30_000;
/// How long the player may take to show the marker by itself before the test looks for
/// its start poster (a player created without autoPlay).
const AUTOPLAY_GRACE = 3_000;
/// The most Tab presses the keyboard check makes (datetime-local inputs take several).
const MAX_TABS = 200;
const FILTER_LABELS = [
  'User', 'Device', 'Destination', 'Router', 'From', 'To', 'Has file operations', 'Still active',
];

class CheckFailed extends Error {
  constructor(check, message) {
    super(message);
    this.check = check;
  }
}

const checks = {};
const screenshots = [];
let current = 'input';

/// Runs one named check; its return value (or true) is its result in the output.
async function check(name, fn) {
  current = name;
  try {
    const result = await fn();
    checks[name] = result === undefined ? true : result;
    return result;
  } catch (err) {
    if (err instanceof CheckFailed) throw err;
    throw new CheckFailed(name, err && err.stack ? err.stack : String(err));
  }
}

function fail(message) {
  throw new CheckFailed(current, message);
}

function ensure(cond, message) {
  if (!cond) fail(typeof message === 'function' ? message() : message);
}

function readInput() {
  const text = process.argv[2] ?? process.env.SSHGW_CONSOLE_TEST_INPUT;
  if (!text) fail('no input: pass the JSON as the first argument or in SSHGW_CONSOLE_TEST_INPUT');
  const input = JSON.parse(text);
  for (const field of ['url', 'token', 'key_file', 'wrong_key_file', 'marker', 'sessions',
    'expected_ids', 'user', 'destination', 'sftp_file', 'artifacts_dir']) {
    ensure(input[field] !== undefined && input[field] !== null, `input lacks "${field}"`);
  }
  for (const s of ['good', 'truncated', 'tampered', 'sftp', 'live']) {
    ensure(typeof input.sessions[s] === 'string', `input lacks sessions.${s}`);
  }
  input.url = input.url.endsWith('/') ? input.url : `${input.url}/`;
  input.excluded_by_destination ??= [];
  return input;
}

// ------------------------------------------------------------------------------------------
// The key's forms that must never leave the page.

function base64NoPad(buf) {
  return buf.toString('base64').replace(/=+$/, '');
}

function base64UrlNoPad(buf) {
  return buf.toString('base64url').replace(/=+$/, '');
}

/// Every form of the private key the page could send or store: the file's text, the key
/// bytes (the base64 in the file decoded) as latin1, hex and base64 (standard and URL-safe,
/// without padding), and the file's bytes in base64.
function keyNeedles(keyFile) {
  const fileBytes = readFileSync(keyFile);
  const text = fileBytes.toString('utf8');
  const trimmed = text.trim();
  const needles = new Map();
  const add = (label, value) => {
    if (value && value.length >= 16) needles.set(label, value);
  };
  add('key file text', text);
  add('key file text (trimmed)', trimmed);
  add('key file text without padding', trimmed.replace(/=+$/, ''));
  add('key file bytes in base64', base64NoPad(fileBytes));
  add('key file bytes in base64url', base64UrlNoPad(fileBytes));
  if (/^[A-Za-z0-9+/]+=*$/.test(trimmed)) {
    const raw = Buffer.from(trimmed, 'base64');
    add('key bytes (latin1)', raw.toString('latin1'));
    add('key bytes (hex)', raw.toString('hex'));
    add('key bytes (HEX)', raw.toString('hex').toUpperCase());
    add('key bytes in base64', base64NoPad(raw));
    add('key bytes in base64url', base64UrlNoPad(raw));
  }
  return needles;
}

/// The labels of the needles found in `haystack` (a string or a Buffer).
function leaks(needles, haystack) {
  if (haystack === undefined || haystack === null) return [];
  const forms = typeof haystack === 'string'
    ? [haystack, safeDecode(haystack)]
    : [haystack.toString('latin1'), haystack.toString('utf8')];
  const found = [];
  for (const [label, needle] of needles) {
    if (forms.some((f) => f.includes(needle))) found.push(label);
  }
  return found;
}

function safeDecode(s) {
  try {
    return decodeURIComponent(s.replace(/\+/g, ' '));
  } catch {
    return s;
  }
}

// ------------------------------------------------------------------------------------------
// Page helpers.

/// Shows a route of the single-page app without reloading (the key lives in page memory).
async function goHash(page, hash) {
  await page.evaluate((h) => { window.location.hash = h; }, hash);
  await page.waitForFunction((h) => window.location.hash === h, hash, { timeout: TIMEOUT });
}

async function showList(page) {
  await goHash(page, '#/');
  await page.locator('[data-testid=sessions-table]').waitFor({ state: 'visible' });
}

/// The session ids of the table's rows.
async function rowIds(page) {
  return page.locator('[data-testid=sessions-table] tr[data-session-id]')
    .evaluateAll((rows) => rows.map((r) => r.getAttribute('data-session-id')));
}

/// `[data-testid=session-count]` as a number ("N sessions").
async function sessionCount(page) {
  const text = (await page.locator('[data-testid=session-count]').textContent()) ?? '';
  const m = text.replace(/,/g, '').match(/(\d+)\s+sessions?/i);
  ensure(m, `[data-testid=session-count] should read "N sessions", reads ${JSON.stringify(text)}`);
  return Number(m[1]);
}

/// Opens a session page through the list (so the detail is rendered afresh).
async function openSession(page, id) {
  await showList(page);
  await goHash(page, `#/sessions/${id}`);
  await page.locator('[data-testid=session-detail]').waitFor({ state: 'visible' });
  await page.locator('[data-testid=channel]').first().waitFor({ state: 'visible' });
}

/// The first channel of the open session that offers `button` ("Replay" or "Show text").
function channelWith(page, button) {
  return page.locator('[data-testid=channel]')
    .filter({ has: page.getByRole('button', { name: button, exact: true }) })
    .first();
}

async function keyStatus(page) {
  return ((await page.locator('[data-testid=key-status]').textContent()) ?? '').trim();
}

async function loadKey(page, file) {
  await page.getByLabel('Recording private key').setInputFiles(file);
  await page.waitForFunction(
    () => /^\s*key loaded/i.test(document.querySelector('[data-testid=key-status]')?.textContent ?? ''),
    null, { timeout: TIMEOUT },
  ).catch(async () => fail(`after loading ${file}, [data-testid=key-status] reads `
    + `${JSON.stringify(await keyStatus(page))}, expected "Key loaded (public key …)"`));
  return keyStatus(page);
}

async function forgetKey(page) {
  await page.getByRole('button', { name: 'Forget key', exact: true }).click();
  await page.waitForFunction(
    () => /no key loaded/i.test(document.querySelector('[data-testid=key-status]')?.textContent ?? ''),
    null, { timeout: TIMEOUT },
  ).catch(async () => fail(`after "Forget key", [data-testid=key-status] reads `
    + `${JSON.stringify(await keyStatus(page))}, expected "No key loaded"`));
}

/// Waits for the visible `[data-testid=recording-error][role=alert]` and returns its text.
async function recordingError(page, what) {
  const alert = page.locator('[data-testid=recording-error][role=alert]').first();
  try {
    await alert.waitFor({ state: 'visible' });
  } catch {
    const any = await page.locator('[data-testid=recording-error]').count();
    fail(`${what}: no visible [data-testid=recording-error][role=alert] within ${TIMEOUT} ms`
      + (any ? ` (${any} [data-testid=recording-error] without role=alert or hidden)` : ''));
  }
  return ((await alert.textContent()) ?? '').trim();
}

/// Presses Replay on the open session's pty channel and waits until the player's terminal
/// shows `marker`; starts the playback itself if the player waits on its poster.
async function replayUntil(page, marker) {
  await channelWith(page, 'Replay').getByRole('button', { name: 'Replay', exact: true }).click();
  const player = page.locator('[data-testid=player]');
  await player.waitFor({ state: 'visible' });
  const shown = (m) => (document.querySelector('[data-testid=player]')?.textContent ?? '').includes(m);
  try {
    await page.waitForFunction(shown, marker, { timeout: AUTOPLAY_GRACE });
    return 'autoplay';
  } catch {
    // Not playing by itself: press the player's start overlay or play button.
  }
  // Only a player waiting on its poster is started: a button press while it plays pauses it.
  const poster = player.locator('.ap-overlay-start').first();
  if (await poster.isVisible()) await poster.click();
  try {
    await page.waitForFunction(shown, marker, { timeout: TIMEOUT });
  } catch {
    const text = (await player.textContent()) ?? '';
    fail(`the player never showed ${JSON.stringify(marker)} within ${TIMEOUT} ms; `
      + `its text: ${JSON.stringify(text.slice(-2000))}`);
  }
  return 'played';
}

/// The accessible name of the focused element (label, aria-label(ledby), or its text).
async function focused(page) {
  return page.evaluate(() => {
    const el = document.activeElement;
    if (!el || el === document.body) return null;
    const norm = (s) => (s ?? '').replace(/\s+/g, ' ').trim();
    let name = el.getAttribute('aria-label');
    if (!name && el.getAttribute('aria-labelledby')) {
      name = el.getAttribute('aria-labelledby').split(/\s+/)
        .map((id) => document.getElementById(id)?.textContent ?? '').join(' ');
    }
    if (!name && el.labels && el.labels.length) name = el.labels[0].textContent;
    if (!name) name = el.textContent;
    return {
      tag: el.tagName.toLowerCase(),
      type: el.getAttribute('type'),
      name: norm(name),
      href: el.getAttribute('href'),
      session: el.closest('tr[data-session-id]')?.getAttribute('data-session-id') ?? null,
    };
  });
}

async function screenshot(page, dir, name) {
  const path = join(dir, name);
  await page.screenshot({ path, fullPage: false });
  screenshots.push(path);
  return path;
}

/// The Live page's row of session `id`.
function liveRow(page, id) {
  return page.locator(`[data-testid=live-table] tr[data-session-id="${id}"]`);
}

/// The session ids of the Live page's rows.
async function liveRowIds(page) {
  return page.locator('[data-testid=live-table] tr[data-session-id]')
    .evaluateAll((rows) => rows.map((r) => r.getAttribute('data-session-id')));
}

/// Presses the Live page's "Refresh" and waits for the page's `GET /api/v1/live` answer.
async function refreshLive(page) {
  await Promise.all([
    page.waitForResponse((r) => new URL(r.url()).pathname === '/api/v1/live' && r.request().method() === 'GET')
      .catch(() => fail('"Refresh" on the Live page should ask GET /api/v1/live')),
    page.getByRole('button', { name: 'Refresh', exact: true }).click(),
  ]);
}

/// Presses "Kill" in the row of `id` and waits for the open kill dialog; returns it.
async function openKillDialog(page, id) {
  await liveRow(page, id).getByRole('button', { name: 'Kill', exact: true }).click();
  const dialog = page.getByRole('dialog');
  await dialog.waitFor({ state: 'visible' })
    .catch(() => fail(`"Kill" in the row of ${id} should open a <dialog>`));
  ensure(await dialog.evaluate((d) => d.tagName === 'DIALOG' && d.open),
    'the kill confirmation should be an open <dialog>');
  return dialog;
}

async function download(page, button) {
  const [dl] = await Promise.all([
    page.waitForEvent('download', { timeout: TIMEOUT }),
    button.click(),
  ]);
  const path = await dl.path();
  ensure(path, `the download of ${dl.suggestedFilename()} failed: ${await dl.failure()}`);
  return { name: dl.suggestedFilename(), bytes: readFileSync(path) };
}

// ------------------------------------------------------------------------------------------

async function main() {
  const input = readInput();
  mkdirSync(input.artifacts_dir, { recursive: true });
  const origin = new URL(input.url).origin;
  const api = (path) => new URL(`api/v1/${path}`, input.url).toString();
  const ids = input.sessions;

  // (a) The API without the token, and with a wrong one: 401 with {"error": "..."}.
  await check('api-401', async () => {
    const paths = ['info', 'sessions', `sessions/${ids.good}`,
      `sessions/${ids.good}/channels/0/recording`, 'chart?by=destination', 'live'];
    const seen = {};
    for (const path of paths) {
      for (const [label, headers] of [
        ['no token', {}],
        ['wrong token', { Authorization: 'Bearer wrong-token-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA' }],
        ['not bearer', { Authorization: `Basic ${Buffer.from(`x:${input.token}`).toString('base64')}` }],
      ]) {
        const res = await fetch(api(path), { headers, redirect: 'manual' });
        const body = await res.text();
        ensure(res.status === 401, `GET /api/v1/${path} with ${label}: status ${res.status}, `
          + `expected 401; body ${JSON.stringify(body.slice(0, 300))}`);
        let json;
        try { json = JSON.parse(body); } catch { json = null; }
        ensure(json && typeof json.error === 'string' && json.error.length > 0,
          `GET /api/v1/${path} with ${label}: 401 body should be {"error": "..."}, is `
          + `${JSON.stringify(body.slice(0, 300))}`);
        seen[`${path} (${label})`] = res.status;
      }
    }
    const ok = await fetch(api('info'), { headers: { Authorization: `Bearer ${input.token}` } });
    ensure(ok.status === 200, `GET /api/v1/info with the token: status ${ok.status}`);
    return { checked: Object.keys(seen).length, info: await ok.json() };
  });

  await check('csp', async () => {
    const res = await fetch(input.url);
    ensure(res.status === 200, `GET / : status ${res.status}`);
    const csp = res.headers.get('content-security-policy') ?? '';
    ensure(csp.includes("default-src 'self'"), `GET / : Content-Security-Policy ${JSON.stringify(csp)} lacks default-src 'self'`);
    const script = csp.split(';').map((d) => d.trim()).find((d) => d.startsWith('script-src')) ?? '';
    ensure(script && !script.includes("'unsafe-inline'") && !script.includes("'unsafe-eval'"),
      `GET / : script-src should be strict: ${JSON.stringify(script)}`);
    return csp;
  });

  const browser = await chromium.launch({
    executablePath: process.env.SSHGW_CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox'],
  });
  let page;
  try {
    const context = await browser.newContext({
      viewport: { width: 1280, height: 800 },
      acceptDownloads: true,
    });
    context.setDefaultTimeout(TIMEOUT);

    // (d) Every request of the whole run (pages and workers), with all headers and bodies.
    const requests = [];
    const pending = [];
    const sockets = [];
    context.on('request', (req) => {
      const entry = { url: req.url(), method: req.method(), headers: req.headers(), post: req.postDataBuffer() };
      requests.push(entry);
      pending.push(req.allHeaders().then((h) => { entry.headers = h; }).catch(() => {}));
    });
    const pageErrors = [];
    const cspViolations = [];
    page = await context.newPage();
    page.on('pageerror', (err) => pageErrors.push(String(err && err.stack ? err.stack : err)));
    page.on('console', (msg) => {
      const text = msg.text();
      if (msg.type() === 'error' && /content security policy|refused to/i.test(text)) cspViolations.push(text);
    });
    page.on('websocket', (ws) => {
      const frames = [];
      sockets.push({ url: ws.url(), frames });
      ws.on('framesent', (f) => frames.push(f.payload));
    });

    // Login form: a wrong token stays on the login page.
    await check('login-form', async () => {
      await page.goto(input.url);
      const field = page.getByLabel('Access token');
      await field.waitFor({ state: 'visible' });
      ensure(await field.getAttribute('type') === 'password', 'the "Access token" input should be type=password');
      await field.fill('wrong-token-BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB');
      // The page asks the API, gets 401 and shows the login again with a message.
      await Promise.all([
        page.waitForResponse((r) => r.url().includes('/api/v1/') && r.status() === 401)
          .catch(() => fail('"Sign in" with a wrong token should ask the API (and get 401)')),
        page.getByRole('button', { name: 'Sign in', exact: true }).click(),
      ]);
      await page.getByLabel('Access token').waitFor({ state: 'visible' });
      ensure(await page.locator('[data-testid=sessions-table]').count() === 0,
        'a wrong token should not show the session list');
    });

    // (b) Login through #token=: the list shows every session of the lab.
    await check('login-token-hash', async () => {
      await page.goto(`${input.url}#token=${input.token}`);
      await page.locator('[data-testid=sessions-table]').waitFor({ state: 'visible' });
      await page.waitForFunction(() => !window.location.href.includes('token='), null, { timeout: TIMEOUT })
        .catch(() => fail(`#token= should be removed from the address bar, URL is ${page.url()}`));
      return page.url();
    });

    await check('list', async () => {
      for (const id of input.expected_ids) {
        await page.locator(`tr[data-session-id="${id}"]`).waitFor({ state: 'attached' })
          .catch(async () => fail(`session ${id} is not a row of the list; rows: ${JSON.stringify(await rowIds(page))}`));
        const href = await page.locator(`tr[data-session-id="${id}"] td`).first().locator('a').first()
          .getAttribute('href');
        ensure(href && href.startsWith(`#/sessions/${id}`), `the first cell of row ${id} should link to #/sessions/${id}, links to ${href}`);
      }
      const count = await sessionCount(page);
      const rows = await rowIds(page);
      ensure(count >= input.expected_ids.length, `session-count says ${count}, the lab made ${input.expected_ids.length}`);
      ensure(rows.length >= input.expected_ids.length, `${rows.length} rows, the lab made ${input.expected_ids.length}`);
      return { count, rows: rows.length };
    });

    // (g) The chart: an svg with an accessible name and at least one bar.
    await check('chart', async () => {
      const svg = page.locator('svg[data-testid=sessions-chart]');
      await svg.waitFor({ state: 'visible' });
      ensure(await svg.getAttribute('role') === 'img', 'the chart svg should have role=img');
      const label = await svg.getAttribute('aria-label');
      ensure(label && label.trim().length > 0, 'the chart svg should have an aria-label');
      const bars = async () => svg.evaluate((el) => [...el.querySelectorAll('rect, path')]
        .filter((b) => {
          const r = b.getBBox();
          return r.width > 0 && r.height > 0;
        }).length);
      await page.waitForFunction(() => {
        const el = document.querySelector('svg[data-testid=sessions-chart]');
        return el && [...el.querySelectorAll('rect, path')].some((b) => {
          const r = b.getBBox();
          return r.width > 0 && r.height > 0;
        });
      }, null, { timeout: TIMEOUT }).catch(() => fail('the chart has no bar (rect or path with a non-empty box)'));
      const byDestination = await bars();
      await Promise.all([
        page.waitForResponse((r) => r.url().includes('/api/v1/chart') && r.url().includes('by=user'))
          .catch(() => fail('choosing "Chart by: user" should ask /api/v1/chart?by=user')),
        page.getByLabel('Chart by').selectOption('user'),
      ]);
      await page.waitForFunction(() => {
        const el = document.querySelector('svg[data-testid=sessions-chart]');
        return el && [...el.querySelectorAll('rect, path')].some((b) => b.getBBox().height > 0);
      }, null, { timeout: TIMEOUT }).catch(() => fail('the chart by user has no bar'));
      const byUser = await bars();
      await page.getByLabel('Chart by').selectOption('destination');
      return { label, bars_by_destination: byDestination, bars_by_user: byUser };
    });

    await check('layout-1280x800', async () => {
      const width = await page.evaluate(() => document.documentElement.scrollWidth);
      ensure(width <= 1280, `the list page scrolls sideways at 1280x800 (scrollWidth ${width})`);
      return { scroll_width: width };
    });

    await check('screenshot-list', async () => screenshot(page, input.artifacts_dir, 'console-list.png'));

    // (c) Load the key through the file input and replay the good session.
    await check('key-load', async () => {
      const before = await keyStatus(page);
      ensure(/no key loaded/i.test(before), `before loading a key, key-status reads ${JSON.stringify(before)}`);
      const status = await loadKey(page, input.key_file);
      if (input.public_key) {
        const m = status.match(/public key\s+([A-Za-z0-9+/=_-]+)/i);
        ensure(m && m[1].length >= 4 && input.public_key.startsWith(m[1]),
          `key-status ${JSON.stringify(status)} should show the start of the public key ${input.public_key}`);
      }
      return status;
    });

    await check('replay', async () => {
      await openSession(page, ids.good);
      const how = await replayUntil(page, input.marker);
      const errors = page.locator('[data-testid=recording-error]').filter({ visible: true });
      if (await errors.count()) fail(`the complete recording shows a recording error: ${await errors.first().textContent()}`);
      const fetched = requests.filter((r) => r.url.includes(`/api/v1/sessions/${ids.good}/channels/`) && r.url.includes('/recording'));
      ensure(fetched.length > 0, 'the page should fetch the encrypted recording from /api/v1/sessions/ID/channels/N/recording');
      return { how, recording_requests: fetched.length };
    });

    await check('screenshot-replay', async () => {
      await page.locator('[data-testid=player]').evaluate((el) => el.scrollIntoView({ block: 'center' }));
      return screenshot(page, input.artifacts_dir, 'console-replay.png');
    });

    await check('downloads', async () => {
      const channel = channelWith(page, 'Replay');
      const cast = await download(page, channel.getByRole('button', { name: 'Download asciicast', exact: true }));
      const castText = cast.bytes.toString('utf8');
      const header = JSON.parse(castText.split('\n')[0]);
      ensure(header.version === 2 && header.width > 0 && header.height > 0,
        `the asciicast header should be v2 with a size: ${castText.split('\n')[0]}`);
      ensure(castText.includes(input.marker), `the downloaded asciicast lacks ${input.marker}`);
      const enc = await download(page, channel.getByRole('button', { name: 'Download encrypted', exact: true }));
      const result = { asciicast: cast.name, encrypted: enc.name, encrypted_bytes: enc.bytes.length };
      if (input.good_recording) {
        const disk = readFileSync(input.good_recording);
        const sha = (b) => createHash('sha256').update(b).digest('hex');
        ensure(sha(disk) === sha(enc.bytes),
          `"Download encrypted" (${enc.bytes.length} bytes) differs from ${input.good_recording} (${disk.length} bytes)`);
      }
      ensure(!enc.bytes.includes(Buffer.from(input.marker)), 'the encrypted download holds the marker in plaintext');
      return result;
    });

    // (e) No key, a wrong key, a truncated and a tampered recording: each a clear error.
    await check('no-key', async () => {
      await forgetKey(page);
      await openSession(page, ids.good);
      const replay = channelWith(page, 'Replay').getByRole('button', { name: 'Replay', exact: true });
      if (await replay.isDisabled()) return 'Replay is disabled without a key';
      await replay.click();
      const text = await recordingError(page, 'Replay without a key');
      ensure(/key/i.test(text), `without a key, the error should mention the key: ${JSON.stringify(text)}`);
      return text;
    });

    await check('wrong-key', async () => {
      await loadKey(page, input.wrong_key_file);
      await openSession(page, ids.good);
      await channelWith(page, 'Replay').getByRole('button', { name: 'Replay', exact: true }).click();
      const text = await recordingError(page, 'Replay with the wrong key');
      ensure(/key/i.test(text), `with the wrong key, the error should mention the key: ${JSON.stringify(text)}`);
      const shown = await page.locator('[data-testid=player]').evaluateAll(
        (els, m) => els.some((e) => (e.textContent ?? '').includes(m)), input.marker);
      ensure(!shown, 'with the wrong key, the player shows the session output');
      return text;
    });

    await check('truncated', async () => {
      await forgetKey(page);
      await loadKey(page, input.key_file);
      await openSession(page, ids.truncated);
      await channelWith(page, 'Replay').getByRole('button', { name: 'Replay', exact: true }).click();
      const text = await recordingError(page, 'Replay of the truncated recording');
      ensure(/truncat/i.test(text), `the truncated recording's error should say truncated: ${JSON.stringify(text)}`);
      return text;
    });

    await check('tampered', async () => {
      await openSession(page, ids.tampered);
      await channelWith(page, 'Replay').getByRole('button', { name: 'Replay', exact: true }).click();
      const text = await recordingError(page, 'Replay of the tampered recording');
      ensure(/tamper|authenticat/i.test(text),
        `the tampered recording's error should say tampered / authentication failed: ${JSON.stringify(text)}`);
      ensure(!/truncat/i.test(text), `the tampered recording's error reads as a truncation: ${JSON.stringify(text)}`);
      return text;
    });

    // (f) Filters, then the sftp session's file operations.
    await check('filters', async () => {
      await showList(page);
      const form = page.getByRole('form', { name: 'Filters' });
      await form.waitFor({ state: 'visible' })
        .catch(() => fail('no form with aria-label "Filters" (role=form)'));
      const ipv4 = [ids.good, ids.truncated, ids.sftp].filter((id) => !input.excluded_by_destination.includes(id));

      await form.getByLabel('User', { exact: true }).fill(input.user);
      await form.getByLabel('Destination', { exact: true }).fill(input.destination);
      await form.getByRole('button', { name: 'Apply', exact: true }).click();
      // Waits until the rows include every id of `want` and none of `unwanted`.
      const waitRows = async (what, want, unwanted) => {
        await page.waitForFunction(([w, u]) => {
          const rows = [...document.querySelectorAll('[data-testid=sessions-table] tr[data-session-id]')]
            .map((r) => r.getAttribute('data-session-id'));
          return w.every((i) => rows.includes(i)) && u.every((i) => !rows.includes(i));
        }, [want, unwanted], { timeout: TIMEOUT })
          .catch(async () => fail(`${what}; rows: ${JSON.stringify(await rowIds(page))}, URL ${page.url()}`));
      };
      await waitRows(
        `user=${input.user} destination=${input.destination} should list ${ipv4} and not ${input.excluded_by_destination}`,
        ipv4, input.excluded_by_destination,
      );
      const byDestination = await rowIds(page);
      ensure(page.url().includes('user=') && page.url().includes('destination='),
        `the filters should be in the hash: ${page.url()}`);

      await form.getByLabel('Has file operations', { exact: true }).check();
      await form.getByRole('button', { name: 'Apply', exact: true }).click();
      const others = input.expected_ids.filter((i) => i !== ids.sftp);
      await waitRows(
        `with "Has file operations" only the sftp session ${ids.sftp} should be listed`,
        [ids.sftp], others,
      );
      const withFiles = await rowIds(page);
      const count = await sessionCount(page);
      ensure(count === withFiles.length, `session-count says ${count} with ${withFiles.length} rows`);
      ensure(/has_file_ops=(true|1|on)/.test(page.url()), `"Has file operations" should be in the hash: ${page.url()}`);

      // A user nobody is: nothing.
      await form.getByLabel('User', { exact: true }).fill('nobody@example.invalid');
      await form.getByRole('button', { name: 'Apply', exact: true }).click();
      await page.waitForFunction(() => /^\s*0\s+sessions?/i.test(
        document.querySelector('[data-testid=session-count]')?.textContent ?? ''), null, { timeout: TIMEOUT })
        .catch(async () => fail(`user=nobody@example.invalid should give "0 sessions", reads `
          + `${JSON.stringify(await page.locator('[data-testid=session-count]').textContent())}`));
      return { by_user_and_destination: byDestination, with_file_ops: withFiles };
    });

    await check('file-ops', async () => {
      await goHash(page, `#/?user=${encodeURIComponent(input.user)}&has_file_ops=true`);
      const link = page.locator(`tr[data-session-id="${ids.sftp}"] td`).first().locator('a').first();
      await link.click();
      await page.waitForFunction((id) => window.location.hash.startsWith(`#/sessions/${id}`), ids.sftp, { timeout: TIMEOUT });
      const list = page.locator('[data-testid=file-ops]');
      await list.waitFor({ state: 'visible' });
      await page.waitForFunction(
        (name) => [...document.querySelectorAll('[data-testid=file-ops] li')].some((li) => li.textContent.includes(name)),
        input.sftp_file, { timeout: TIMEOUT },
      ).catch(async () => fail(`[data-testid=file-ops] should list ${input.sftp_file}: `
        + `${JSON.stringify(await list.textContent())}`));
      const items = await list.locator('li').count();
      return { items };
    });

    // (i) The Live page (the daemon's control socket): the held session is a row; its Kill
    //     asks for confirmation, Cancel leaves it live, "Kill session" kills it.
    const liveApi = async () => {
      const res = await fetch(api('live'), { headers: { Authorization: `Bearer ${input.token}` } });
      const body = await res.text();
      ensure(res.status === 200, `GET /api/v1/live: status ${res.status}, body ${body.slice(0, 300)}`);
      const json = JSON.parse(body);
      ensure(json.available === true && Array.isArray(json.sessions),
        `GET /api/v1/live should be available with a session list: ${body.slice(0, 500)}`);
      return json.sessions.map((x) => x.id);
    };
    const killRequests = () => requests.filter((r) => r.method === 'POST' && r.url.includes('/kill'));

    await check('live', async () => {
      ensure((await liveApi()).includes(ids.live), `GET /api/v1/live should list the held session ${ids.live}`);
      await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Live', exact: true }).click();
      await page.waitForFunction(() => window.location.hash === '#/live', null, { timeout: TIMEOUT })
        .catch(() => fail(`the "Live" link of the Main navigation should open #/live; URL ${page.url()}`));
      await page.locator('[data-testid=live-table]').waitFor({ state: 'visible' })
        .catch(async () => fail('#/live should show [data-testid=live-table]; '
          + `[data-testid=live-unavailable] reads ${JSON.stringify(await page.locator('[data-testid=live-unavailable]').textContent())}`));
      await liveRow(page, ids.live).waitFor({ state: 'visible' })
        .catch(async () => fail(`the held session ${ids.live} should be a row of [data-testid=live-table]; rows: `
          + `${JSON.stringify(await liveRowIds(page))}`));
      return { rows: await liveRowIds(page) };
    });

    await check('live-kill-cancel', async () => {
      const dialog = await openKillDialog(page, ids.live);
      const text = ((await dialog.textContent()) ?? '').replace(/\s+/g, ' ').trim();
      ensure(text.includes(ids.live), `the kill dialog should name the session ${ids.live}: ${JSON.stringify(text)}`);
      ensure(text.includes(input.user), `the kill dialog should name the user ${input.user}: ${JSON.stringify(text)}`);
      for (const name of ['Kill session', 'Cancel']) {
        await dialog.getByRole('button', { name, exact: true }).waitFor({ state: 'visible' })
          .catch(() => fail(`the kill dialog should have a button "${name}"`));
      }
      const shot = await screenshot(page, input.artifacts_dir, 'console-live.png');
      await dialog.getByRole('button', { name: 'Cancel', exact: true }).click();
      await page.waitForFunction(() => ![...document.querySelectorAll('dialog')].some((d) => d.open), null, { timeout: TIMEOUT })
        .catch(() => fail('"Cancel" should close the kill dialog'));
      ensure(killRequests().length === 0,
        `"Cancel" should send no kill; requests: ${killRequests().map((r) => `${r.method} ${r.url}`).join(', ')}`);
      // Still live: in a fresh answer of the page (a new row, not the marked old one) and
      // of the API.
      await liveRow(page, ids.live).evaluate((r) => r.setAttribute('data-test-before-refresh', ''));
      await refreshLive(page);
      await page.locator(`[data-testid=live-table] tr[data-session-id="${ids.live}"]:not([data-test-before-refresh])`)
        .waitFor({ state: 'visible' })
        .catch(async () => fail(`after "Cancel" and "Refresh" the session ${ids.live} should still be a row; rows: `
          + `${JSON.stringify(await liveRowIds(page))}`));
      ensure((await liveApi()).includes(ids.live), `after "Cancel" GET /api/v1/live should still list ${ids.live}`);
      return { dialog: text, screenshot: shot };
    });

    await check('live-kill', async () => {
      const dialog = await openKillDialog(page, ids.live);
      const text = ((await dialog.textContent()) ?? '').replace(/\s+/g, ' ').trim();
      ensure(text.includes(ids.live), `the kill dialog should name the session ${ids.live}: ${JSON.stringify(text)}`);
      const [res] = await Promise.all([
        page.waitForResponse((r) => new URL(r.url()).pathname === `/api/v1/sessions/${ids.live}/kill`)
          .catch(() => fail(`"Kill session" should send POST /api/v1/sessions/${ids.live}/kill`)),
        dialog.getByRole('button', { name: 'Kill session', exact: true }).click(),
      ]);
      const body = await res.text();
      ensure(res.request().method() === 'POST' && res.status() === 200,
        `${res.request().method()} /api/v1/sessions/${ids.live}/kill: status ${res.status()}, expected POST → 200; body ${body.slice(0, 300)}`);
      let answer;
      try { answer = JSON.parse(body); } catch { answer = null; }
      ensure(answer && answer.killed === ids.live,
        `POST /api/v1/sessions/${ids.live}/kill should answer {"killed": "${ids.live}"}, answered ${body.slice(0, 300)}`);
      await page.waitForFunction(() => ![...document.querySelectorAll('dialog')].some((d) => d.open), null, { timeout: TIMEOUT })
        .catch(async () => fail('after a successful kill the dialog should close; it reads '
          + `${JSON.stringify(((await page.locator('dialog').first().textContent()) ?? '').replace(/\s+/g, ' ').trim())}`));
      // The page says so (before any "Refresh", which clears the line).
      const statusLine = page.getByRole('status').filter({ hasText: ids.live });
      await statusLine.first().waitFor({ state: 'visible' })
        .catch(async () => fail(`after the kill a role=status line should name ${ids.live}; status lines: `
          + `${JSON.stringify(await page.getByRole('status').allTextContents())}`));
      const status = ((await statusLine.first().textContent()) ?? '').trim();
      ensure(/killed/i.test(status), `after the kill the status line should say ${ids.live} was killed: ${JSON.stringify(status)}`);
      // The daemon ends the session asynchronously: the row goes once a load of the page no
      // longer gets it. The page reloads after the kill by itself; "Refresh" (as an
      // auditor would) only if the session was still ending then.
      const deadline = Date.now() + TIMEOUT;
      let refreshes = 0;
      for (;;) {
        const gone = await page.waitForFunction(
          (id) => !document.querySelector(`[data-testid=live-table] tr[data-session-id="${id}"]`),
          ids.live, { timeout: Math.max(1, Math.min(5_000, deadline - Date.now())) },
        ).then(() => true, () => false);
        if (gone) break;
        if (Date.now() >= deadline) {
          fail(`after the kill the row of ${ids.live} should disappear from [data-testid=live-table] within `
            + `${TIMEOUT} ms (${refreshes} presses of "Refresh"); rows: ${JSON.stringify(await liveRowIds(page))}; `
            + `GET /api/v1/live lists ${JSON.stringify(await liveApi())}`);
        }
        await refreshLive(page);
        refreshes += 1;
      }
      ensure(!(await liveApi()).includes(ids.live), `after the kill GET /api/v1/live still lists ${ids.live}`);
      ensure(killRequests().length === 1,
        `one kill request expected: ${killRequests().map((r) => `${r.method} ${r.url}`).join(', ')}`);
      return { status, refreshes_needed: refreshes };
    });

    // (d) The key never left the page: not in any request, not in storage or cookies.
    await check('key-never-sent', async () => {
      await Promise.all(pending);
      const needles = keyNeedles(input.key_file);
      const wrong = keyNeedles(input.wrong_key_file);
      for (const [label, n] of wrong) needles.set(`wrong key: ${label}`, n);
      const found = [];
      for (const r of requests) {
        const where = [['URL', r.url], ['post data', r.post]];
        for (const [name, value] of Object.entries(r.headers ?? {})) where.push([`header ${name}`, value]);
        for (const [part, value] of where) {
          const hit = leaks(needles, value);
          if (hit.length) found.push(`${r.method} ${r.url}: ${part} holds ${hit.join(', ')}`);
        }
      }
      for (const s of sockets) {
        for (const frame of s.frames) {
          const hit = leaks(needles, typeof frame === 'string' ? frame : Buffer.from(frame));
          if (hit.length) found.push(`websocket ${s.url}: a frame holds ${hit.join(', ')}`);
        }
      }
      ensure(found.length === 0, `the private key left the page:\n${found.join('\n')}`);
      const storage = await page.evaluate(() => {
        const dump = (s) => Object.fromEntries(Array.from({ length: s.length }, (_, i) => s.key(i)).map((k) => [k, s.getItem(k)]));
        return { local: dump(window.localStorage), session: dump(window.sessionStorage), cookie: document.cookie };
      });
      const cookies = await context.cookies();
      const stored = JSON.stringify({ storage, cookies });
      const inStorage = leaks(needles, stored);
      ensure(inStorage.length === 0, `the private key is in page storage or cookies: ${inStorage.join(', ')}`);
      const dbs = await page.evaluate(async () => (indexedDB.databases ? (await indexedDB.databases()).map((d) => d.name) : []));
      const foreign = requests.filter((r) => !r.url.startsWith(`${origin}/`) && !/^(data|blob):/.test(r.url));
      ensure(foreign.length === 0, `requests to other origins (no CDN allowed): ${foreign.map((r) => r.url).join(', ')}`);
      return {
        requests: requests.length,
        with_post_data: requests.filter((r) => r.post && r.post.length).length,
        websockets: sockets.length,
        needles: needles.size,
        storage_keys: { local: Object.keys(storage.local), session: Object.keys(storage.session) },
        cookies: cookies.length,
        indexeddb: dbs,
      };
    });

    // (h) Keyboard: from the top, Tab reaches every filter and a session link; Enter opens it.
    await check('keyboard', async () => {
      await goHash(page, '#/');
      await page.reload(); // a fresh document: focus starts at the top (the token is in sessionStorage)
      await page.locator('[data-testid=sessions-table] tr[data-session-id]').first().waitFor({ state: 'visible' });
      const reached = new Set();
      const seen = [];
      let link = null;
      let onLink = false;
      const wanted = [...FILTER_LABELS, 'Apply'];
      // Tab until every filter and a session link were reached, and the focus is on a link.
      for (let i = 0; i < MAX_TABS && !(onLink && wanted.every((l) => reached.has(l))); i += 1) {
        await page.keyboard.press('Tab');
        const f = await focused(page);
        onLink = false;
        if (!f) continue;
        const step = `${f.tag}:${f.name.slice(0, 40)}`;
        if (seen.length < 100 && seen[seen.length - 1] !== step) seen.push(step);
        for (const label of FILTER_LABELS) if (f.name.toLowerCase() === label.toLowerCase()) reached.add(label);
        if (f.tag === 'button' && f.name === 'Apply') reached.add('Apply');
        if (f.tag === 'a' && f.href && f.href.startsWith('#/sessions/')) {
          link = f;
          onLink = true;
        }
      }
      const missing = wanted.filter((l) => !reached.has(l));
      ensure(missing.length === 0, `Tab from the top never reached ${missing.join(', ')}; focus went: ${seen.join(' → ')}`);
      ensure(link && onLink, `Tab from the top never reached a session link (#/sessions/…); focus went: ${seen.join(' → ')}`);
      await page.keyboard.press('Enter');
      await page.waitForFunction((href) => window.location.hash.startsWith(href), link.href, { timeout: TIMEOUT })
        .catch(() => fail(`Enter on the link ${link.href} did not open it; URL ${page.url()}`));
      await page.locator('[data-testid=session-detail]').waitFor({ state: 'visible' });
      return { link: link.href, reached: [...reached] };
    });

    await check('page-errors', async () => {
      ensure(pageErrors.length === 0, `uncaught errors in the page:\n${pageErrors.join('\n')}`);
      ensure(cspViolations.length === 0, `Content-Security-Policy violations:\n${cspViolations.join('\n')}`);
    });
  } catch (err) {
    if (page && !page.isClosed()) {
      await page.screenshot({ path: join(input.artifacts_dir, 'console-failure.png') })
        .then(() => screenshots.push(join(input.artifacts_dir, 'console-failure.png')))
        .catch(() => {});
    }
    throw err;
  } finally {
    await browser.close();
  }
}

main().then(() => {
  console.log(JSON.stringify({ ok: true, checks, screenshots }));
}).catch((err) => {
  const failed = err instanceof CheckFailed ? err.check : current;
  const error = err instanceof CheckFailed ? err.message : (err && err.stack) || String(err);
  console.log(JSON.stringify({ ok: false, failed, error, checks, screenshots }));
  console.error(`console.mjs: check "${failed}" failed: ${error}`);
  process.exit(1);
});
