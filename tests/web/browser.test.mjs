// The web client in real Chromium (playwright-core driving Debian's chromium) against real
// processes: nats-server with JetStream, `veto authority`, `veto sidecar` (/check against the
// authority's JWKS, following revocations), and a node app server (page, module, login handler,
// API). Skipped, saying why, when Chromium, the veto binary, nats-server or playwright-core is
// missing; the socket tests are skipped while the authority answers 404 on /v1/ws.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { request as httpRequest } from "node:http";
import { execFile } from "node:child_process";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import * as h from "./harness.mjs";

const require = createRequire(join(h.REPO, "clients/web/package.json"));
let playwright = null;
try {
  playwright = require("playwright-core");
} catch {
  playwright = null;
}

const missing = [];
const veto = h.vetoBin();
const nats = h.natsBin();
const chromium = h.chromiumBin();
if (!veto) missing.push("target/debug/veto (cargo build)");
if (!nats) missing.push("nats-server (VETO_NATS_SERVER_BIN)");
if (!chromium) missing.push("chromium (apt-get install chromium)");
if (!playwright) missing.push("playwright-core (npm ci in clients/web)");
const SKIP = missing.length ? `missing ${missing.join(", ")}` : false;
if (SKIP) console.log(`# browser tests skipped: ${SKIP}`);

const env = {};
const { sleep, until } = h;

before(async () => {
  if (SKIP) return;
  const t0 = Date.now();
  env.dir = h.tempDir();
  env.kit = h.makeKit(join(env.dir, "kit"), veto);
  env.nats = await h.startNats(env.dir, nats);
  // The page origin must be known before the authority starts (cors_origins).
  const pagePort = await h.freePort();
  const origin = `http://127.0.0.1:${pagePort}`;
  env.authority = await h.startAuthority(join(env.dir, "a1"), veto, env.kit, env.nats.url, { corsOrigins: [origin] });
  env.sidecar = await h.startSidecar(join(env.dir, "sc"), veto, env.authority.base + "/.well-known/jwks.json", env.nats.url);
  env.admins = [env.authority.base];
  env.app = await h.startApp({ sidecar: env.sidecar.base, admins: env.admins, port: pagePort });
  env.browser = await playwright.chromium.launch({ executablePath: chromium, args: ["--no-sandbox", "--disable-dev-shm-usage"], headless: true });
  const ws = await fetch(env.authority.base + "/v1/ws");
  env.wsStatus = ws.status;
  env.wsSkip = ws.status === 404 ? "the authority answers 404 on /v1/ws (the push socket is not there yet)" : false;
  if (env.wsSkip) console.log(`# socket tests skipped: ${env.wsSkip}`);
  console.log(`# setup (nats, authority, sidecar, app, chromium): ${Date.now() - t0} ms`);
});

after(async () => {
  if (SKIP) return;
  await env.browser?.close();
  await env.app?.stop();
  for (const p of [env.authority2, env.sidecar, env.authority, env.nats]) await p?.stop();
  h.removeDir(env.dir);
});

/** A browser context (one profile: its pages are tabs of one origin) with n tabs on the page. */
async function tabs(n, { authority = env.authority.base, noWebLocks = false } = {}) {
  const ctx = await env.browser.newContext();
  await ctx.addInitScript(
    ({ noWebLocks }) => {
      if (noWebLocks) Object.defineProperty(Navigator.prototype, "locks", { get: () => undefined, configurable: true });
      // Record the sockets the client opens (kept in the page; never printed).
      const W = window.WebSocket;
      window.__ws = [];
      window.WebSocket = class extends W {
        constructor(url, protocols) {
          super(url, protocols);
          const rec = { url, token: String(protocols?.[1] || "").replace(/^veto\.bearer\./, ""), opened: false, code: null, messages: [] };
          window.__ws.push(rec);
          this.addEventListener("open", () => (rec.opened = true, rec.protocol = this.protocol));
          this.addEventListener("close", (e) => (rec.code = e.code));
          this.addEventListener("message", (e) => rec.messages.push(String(e.data)));
        }
      };
    },
    { noWebLocks },
  );
  const pages = [];
  for (let i = 0; i < n; i++) {
    const p = await ctx.newPage();
    const errors = [];
    p.on("pageerror", (e) => errors.push(String(e)));
    // the module writes nothing to the console; the browser's own network lines are not its
    p.on("console", (m) => /^Failed to load resource/.test(m.text()) || errors.push("console: " + m.text()));
    p.errors = errors;
    await p.goto(`${env.app.origin}/?authority=${encodeURIComponent(authority)}`);
    await p.waitForFunction(() => window.vetoReady === true);
    pages.push(p);
  }
  return { ctx, pages };
}

const sessionOf = (p) => p.evaluate(() => window.veto.session);

test("login, a call through the API (sidecar /check): 200; the tokens reach a second tab", { skip: SKIP }, async () => {
  const { ctx, pages } = await tabs(2);
  const [a, b] = pages;
  const sid = await a.evaluate(() => window.login("alice"));
  assert.match(sid, /.+/);
  assert.equal(await a.evaluate(() => window.api()), 200);
  await until(() => sessionOf(b), 2000, "tokens in tab b");
  assert.equal((await sessionOf(b)).sessionId, sid);
  assert.equal(await b.evaluate(() => window.api()), 200);
  // a tab opened after the login asks the open tabs
  const c = await ctx.newPage();
  await c.goto(`${env.app.origin}/?authority=${encodeURIComponent(env.authority.base)}`);
  await c.waitForFunction(() => window.vetoReady === true);
  assert.equal(await c.evaluate(() => window.api()), 200);
  for (const p of [a, b, c]) assert.deepEqual(p.errors ?? [], []);
  await ctx.close();
});

for (const noWebLocks of [false, true]) {
  test(`two tabs hit a 401 at the same moment: exactly one refresh reaches the authority (${noWebLocks ? "BroadcastChannel lock" : "Web Locks"})`, { skip: SKIP }, async () => {
    const { ctx, pages } = await tabs(2, { noWebLocks });
    const [a, b] = pages;
    assert.equal(await a.evaluate(() => typeof navigator.locks), noWebLocks ? "undefined" : "object");
    await a.evaluate(() => window.login("bob"));
    await until(() => sessionOf(b), 2000, "tokens in tab b");
    assert.equal(await a.evaluate(() => window.api()), 200);
    assert.equal(await b.evaluate(() => window.api()), 200);
    env.app.rejectSeen(); // the API now answers 401 to the current access token
    const before = await h.refreshCounts(env.authority);
    const api0 = env.app.api;
    const t0 = Date.now();
    // Both tabs start the call at once: a shared deadline on the page clock.
    const at = Date.now() + 300;
    const [sa, sb] = await Promise.all(
      [a, b].map((p) =>
        p.evaluate(async (at) => {
          await new Promise((r) => setTimeout(r, Math.max(0, at - Date.now())));
          return window.api();
        }, at),
      ),
    );
    const ms = Date.now() - t0 - 300;
    const after = await h.refreshCounts(env.authority);
    assert.deepEqual([sa, sb], [200, 200], "both retried requests succeed");
    assert.equal(after.total - before.total, 1, `one refresh at the authority: ${JSON.stringify({ before, after })}`);
    assert.equal((after.rotated || 0) - (before.rotated || 0), 1);
    assert.equal((after.reuse || 0) - (before.reuse || 0), 0, "no theft detected");
    assert.equal(env.app.api - api0, 4, "each tab: one 401, one retry");
    const [x, y] = [await sessionOf(a), await sessionOf(b)];
    assert.equal(x.expiresAt, y.expiresAt, "both tabs hold the same new tokens");
    console.log(`# two-tab 401 → single refresh → both retried (${noWebLocks ? "BroadcastChannel" : "Web Locks"}): ${ms} ms`);
    for (const p of pages) assert.deepEqual(p.errors, []);
    await ctx.close();
  });
}

test("invalid_grant on refresh (session logged out elsewhere): every tab gets the logout callback once", { skip: SKIP }, async () => {
  const { ctx, pages } = await tabs(3);
  const [a, b, c] = pages;
  const sid = await a.evaluate(() => window.login("carol"));
  await until(async () => (await sessionOf(b)) && (await sessionOf(c)), 2000, "tokens in every tab");
  assert.equal(await a.evaluate(() => window.api()), 200);
  const login = env.app.logins.find((l) => l.session_id === sid);
  // log the session out from outside (another device, the server)
  const r = await fetch(env.authority.base + "/v1/logout", {
    method: "POST",
    headers: { "content-type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({ token: login.refresh_token }),
  });
  assert.equal(r.status, 200);
  env.app.rejectSeen(); // the access token answers 401 at once (the sidecar would soon anyway)
  const t0 = Date.now();
  assert.equal(await b.evaluate(() => window.api()), 401, "the original 401 comes back");
  for (const p of pages) await until(() => p.evaluate(() => window.logouts.length > 0), 3000, "logout callback");
  const ms = Date.now() - t0;
  await sleep(200);
  for (const p of pages) {
    const l = await p.evaluate(() => window.logouts);
    assert.equal(l.length, 1, "once per tab");
    assert.equal(l[0].reason, "invalid_grant");
    assert.equal(l[0].forced, true);
    assert.equal(l[0].sessionId, sid);
    assert.equal(await sessionOf(p), null);
  }
  console.log(`# invalid_grant → logout callback in 3 tabs: ${ms} ms`);
  await ctx.close();
});

test("logout() in one tab: POST /v1/logout, every tab told, the API refuses the old token", { skip: SKIP }, async () => {
  const { ctx, pages } = await tabs(2);
  const [a, b] = pages;
  await a.evaluate(() => window.login("dave"));
  await until(() => sessionOf(b), 2000, "tokens in tab b");
  await b.evaluate(() => window.veto.logout());
  for (const p of pages) await until(() => p.evaluate(() => window.logouts.length === 1), 3000, "logout callback");
  assert.equal((await a.evaluate(() => window.logouts))[0].reason, "logout");
  assert.equal(await a.evaluate(() => window.api()), 401, "no bearer any more");
  await ctx.close();
});

// ---------------------------------------------------------------------------------------------
// The push socket (skipped while the authority answers 404 on /v1/ws)
// ---------------------------------------------------------------------------------------------

const wsSkip = () => SKIP || env.wsSkip;

function revoke(args) {
  return new Promise((res, rej) =>
    execFile(veto, ["revoke", ...args, "--nats", env.nats.url, "--region", "us"], (e, out, err) => (e ? rej(new Error(err || String(e))) : res(out))),
  );
}

/** A raw WebSocket handshake from node: the status (101 or the refusal) and the protocol. */
function handshake(base, { origin, protocols }) {
  const u = new URL(base);
  return new Promise((resolve, reject) => {
    const req = httpRequest({
      host: u.hostname,
      port: u.port,
      path: "/v1/ws",
      headers: {
        Connection: "Upgrade",
        Upgrade: "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": randomBytes(16).toString("base64"),
        "Sec-WebSocket-Protocol": protocols.join(", "),
        ...(origin ? { Origin: origin } : {}),
      },
    });
    req.on("upgrade", (res, sock) => {
      sock.destroy();
      resolve({ status: res.statusCode, protocol: res.headers["sec-websocket-protocol"] });
    });
    req.on("response", (res) => {
      res.resume();
      resolve({ status: res.statusCode });
    });
    req.on("error", reject);
    req.setTimeout(5000, () => req.destroy(new Error("handshake timeout")));
    req.end();
  });
}

test("socket: handshake refusals (bad Origin 403, garbage token 401) and the accepted subprotocol", { skip: SKIP }, async (t) => {
  if (wsSkip()) return t.skip(wsSkip());
  const login = await (
    await fetch(env.authority.base + "/v1/sessions", {
      method: "POST",
      headers: { authorization: "Bearer " + h.ADMIN_TOKEN, "content-type": "application/json" },
      body: JSON.stringify({ sub: "erin" }),
    })
  ).json();
  const good = await handshake(env.authority.base, { origin: env.app.origin, protocols: ["veto.v1", "veto.bearer." + login.access_token] });
  assert.equal(good.status, 101);
  assert.equal(good.protocol, "veto.v1");
  const badOrigin = await handshake(env.authority.base, { origin: "http://evil.test", protocols: ["veto.v1", "veto.bearer." + login.access_token] });
  assert.equal(badOrigin.status, 403);
  const garbage = await handshake(env.authority.base, { origin: env.app.origin, protocols: ["veto.v1", "veto.bearer.garbage"] });
  assert.equal(garbage.status, 401);
});

test("socket: an admin revocation logs both tabs out (4403), no reconnect", { skip: SKIP }, async (t) => {
  if (wsSkip()) return t.skip(wsSkip());
  const { ctx, pages } = await tabs(2);
  const [a, b] = pages;
  const sid = await a.evaluate(() => window.login("frank"));
  await until(() => sessionOf(b), 2000, "tokens in tab b");
  for (const p of pages) p.evaluate(() => window.veto.connect());
  for (const p of pages) await until(() => p.evaluate(() => window.__ws.some((w) => w.opened)), 5000, "socket open");
  assert.equal(await a.evaluate(() => window.__ws[0].protocol), "veto.v1");
  assert.equal(await a.evaluate(() => window.__ws[0].url.includes(window.__ws[0].token)), false, "no token in the URL");
  const t0 = Date.now();
  await revoke(["--session", sid, "--issuer", h.ISSUER, "--urgent"]);
  for (const p of pages) await until(() => p.evaluate(() => window.logouts.length > 0), 5000, "forced logout");
  const ms = Date.now() - t0;
  await sleep(1500);
  for (const p of pages) {
    const l = await p.evaluate(() => window.logouts);
    assert.equal(l.length, 1);
    assert.equal(l[0].forced, true);
    assert.equal(l[0].source, "socket");
    assert.equal(l[0].reason, "admin");
    assert.equal(await sessionOf(p), null);
    const socks = await p.evaluate(() => window.__ws.map((w) => ({ opened: w.opened, code: w.code })));
    assert.equal(socks.length, 1, "never reconnects after a revocation: " + JSON.stringify(socks));
  }
  console.log(`# revocation (veto revoke) → forced logout in 2 tabs: ${ms} ms`);
  await ctx.close();
});

test("socket: expired access token (4401) → refresh → reconnect with the new token", { skip: SKIP }, async (t) => {
  if (wsSkip()) return t.skip(wsSkip());
  if (!env.authority2) {
    env.authority2 = await h.startAuthority(join(env.dir, "a2"), veto, env.kit, env.nats.url, {
      corsOrigins: [env.app.origin],
      extra: 'access_token_ttl = "4s"\nleeway = "1s"', // the socket closes at exp + leeway
    });
    env.admins.push(env.authority2.base);
  }
  const { ctx, pages } = await tabs(1, { authority: env.authority2.base });
  const [a] = pages;
  await a.evaluate(() => window.login("grace"));
  a.evaluate(() => window.veto.connect());
  await until(() => a.evaluate(() => window.__ws.some((w) => w.opened)), 5000, "socket open");
  const before = await h.refreshCounts(env.authority2);
  const t0 = Date.now();
  const socks = await until(
    () => a.evaluate(() => (window.__ws.length >= 2 && window.__ws[1].opened ? window.__ws.map((w) => ({ token: w.token, code: w.code, messages: w.messages })) : null)),
    15000,
    "reconnect after 4401",
  ).catch(async (e) => {
    const state = await a.evaluate(() => ({ ws: window.__ws.map((w) => ({ opened: w.opened, code: w.code, messages: w.messages })), logouts: window.logouts, session: window.veto.session, now: Date.now() }));
    throw new Error(`${e.message}: ${JSON.stringify(state)}`);
  });
  const ms = Date.now() - t0;
  assert.equal(socks[0].code, 4401);
  assert.ok(socks[0].messages.some((m) => JSON.parse(m).type === "expired"));
  assert.notEqual(socks[1].token, socks[0].token, "reconnected with a new access token");
  const after = await h.refreshCounts(env.authority2);
  assert.equal(after.total - before.total, 1);
  assert.deepEqual(await a.evaluate(() => window.logouts), []);
  console.log(`# 4401 → refresh → reconnect: ${ms} ms after the first socket opened (ttl 4 s)`);
  await ctx.close();
});

test("socket: a refused handshake (garbage access token) → refresh → connected", { skip: SKIP }, async (t) => {
  if (wsSkip()) return t.skip(wsSkip());
  const { ctx, pages } = await tabs(1);
  const [a] = pages;
  await a.evaluate(() => window.login("heidi"));
  // keep the real refresh token, spoil the access token
  const login = env.app.logins.at(-1);
  await a.evaluate((l) => window.veto.setTokens({ ...l, access_token: "garbage.garbage.garbage" }), login);
  a.evaluate(() => window.veto.connect());
  const t0 = Date.now();
  await until(() => a.evaluate(() => window.__ws.some((w) => w.opened)), 15000, "connected after refresh");
  const socks = await a.evaluate(() => window.__ws.map((w) => ({ opened: w.opened, code: w.code })));
  assert.ok(socks.length >= 3, JSON.stringify(socks));
  assert.equal(socks[0].code, 1006);
  console.log(`# refused handshake ×2 → refresh → connected: ${Date.now() - t0} ms`);
  await ctx.close();
});
