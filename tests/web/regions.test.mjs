// The web client in real Chromium against a real 3-region topology (us, eu, ap): per region a
// core-NATS hub (gateways) + a JetStream leaf in its own domain (`veto nats topology`), one
// `veto authority` (shared signing keys, refresh MAC key, admin token; cors_origins = the page),
// one `veto sidecar` trusting its region's authority JWKS, and Envoy (ext_authz gRPC → the us
// sidecar) in front of the API in us. The page is homed in us (login handler → us authority)
// and its sockets go to the us authority; what kills the session happens in eu or ap.
// Skipped, saying why, when Chromium, target/debug/veto, nats-server, Envoy or playwright-core
// is missing.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { join } from "node:path";
import * as h from "./harness.mjs";

const require = createRequire(join(h.REPO, "clients/web/package.json"));
let playwright = null;
try {
  playwright = require("playwright-core");
} catch {
  playwright = null;
}

const REGIONS = ["us", "eu", "ap"];
const missing = [];
const veto = h.vetoBin();
const nats = h.natsBin();
const chromium = h.chromiumBin();
const envoy = h.envoyBin();
if (!veto) missing.push("target/debug/veto (cargo build)");
if (!nats) missing.push("nats-server (VETO_NATS_SERVER_BIN)");
if (!chromium) missing.push("chromium (apt-get install chromium)");
if (!envoy) missing.push("Envoy (VETO_ENVOY_BIN: scripts/install-deps.sh, source scripts/env.sh)");
if (!playwright) missing.push("playwright-core (npm ci in clients/web)");
const SKIP = missing.length ? `missing ${missing.join(", ")}` : false;
if (SKIP) console.log(`# region browser tests skipped: ${SKIP}`);

const env = { auth: {}, sidecars: {} };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function until(cond, ms, what) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(25);
  }
}

/** The last lines of every process log, for failure messages. */
function logs(n = 25) {
  const procs = [...Object.values(env.auth), ...Object.values(env.sidecars), env.envoy].filter(Boolean);
  return procs.map((p) => `--- ${p.name}\n${p.log().split("\n").slice(-n).join("\n")}`).join("\n");
}

before(async () => {
  if (SKIP) return;
  const t0 = Date.now();
  env.dir = h.tempDir();
  env.kit = h.makeKit(join(env.dir, "kit"), veto);
  env.topo = await h.startTopology(env.dir, veto, nats, REGIONS);
  const tTopo = Date.now() - t0;
  const pagePort = await h.freePort();
  const origin = `http://127.0.0.1:${pagePort}`;
  const natsExtra = 'catchup_after = "1s"\n';
  const auths = await Promise.all(
    REGIONS.map((r) =>
      h.startAuthority(join(env.dir, `auth-${r}`), veto, env.kit, env.topo.url(r), { corsOrigins: [origin], region: r, regions: REGIONS, natsExtra }),
    ),
  );
  REGIONS.forEach((r, i) => (env.auth[r] = auths[i]));
  const scs = await Promise.all(
    REGIONS.map((r) =>
      h.startSidecar(join(env.dir, `sc-${r}`), veto, env.auth[r].base + "/.well-known/jwks.json", env.topo.url(r), { region: r, regions: REGIONS, natsExtra }),
    ),
  );
  REGIONS.forEach((r, i) => (env.sidecars[r] = scs[i]));
  env.upstream = await h.startUpstream();
  env.envoy = await h.startEnvoy(join(env.dir, "envoy-us"), envoy, env.sidecars.us.grpc, env.upstream.port);
  env.app = await h.startApp({ apiVia: env.envoy.base, admins: [env.auth.us.base], port: pagePort });
  env.browser = await playwright.chromium.launch({ executablePath: chromium, args: ["--no-sandbox", "--disable-dev-shm-usage"], headless: true });
  console.log(`# setup: topology (6 nats-server, provisioned) ${tTopo} ms; + 3 authorities, 3 sidecars, Envoy, app, chromium: ${Date.now() - t0} ms`);
});

after(async () => {
  if (SKIP) return;
  await env.browser?.close();
  await env.app?.stop();
  await env.envoy?.stop();
  await env.upstream?.stop();
  await Promise.all([...Object.values(env.sidecars), ...Object.values(env.auth)].map((p) => p.stop()));
  await env.topo?.stop();
  h.removeDir(env.dir);
});

/** One browser profile with n tabs on the page (socket to `authority`), sockets recorded. */
async function tabs(n, authority) {
  const ctx = await env.browser.newContext();
  await ctx.addInitScript(() => {
    const W = window.WebSocket;
    window.__ws = [];
    window.WebSocket = class extends W {
      constructor(url, protocols) {
        super(url, protocols);
        const rec = { url, opened: false, code: null, messages: [] };
        window.__ws.push(rec);
        this.addEventListener("open", () => (rec.opened = true));
        this.addEventListener("close", (e) => (rec.code = e.code));
        this.addEventListener("message", (e) => rec.messages.push(String(e.data)));
      }
    };
  });
  const pages = [];
  for (let i = 0; i < n; i++) {
    const p = await ctx.newPage();
    p.errors = [];
    p.on("pageerror", (e) => p.errors.push(String(e)));
    p.on("console", (m) => /^Failed to load resource/.test(m.text()) || p.errors.push("console: " + m.text()));
    await p.goto(`${env.app.origin}/?authority=${encodeURIComponent(authority)}`);
    await p.waitForFunction(() => window.vetoReady === true, null, { timeout: 10000 });
    pages.push(p);
  }
  return { ctx, pages };
}

const sessionOf = (p) => p.evaluate(() => window.veto.session);
const state = (p) => p.evaluate(() => ({ ws: window.__ws, logouts: window.logouts, session: window.veto.session }));

/** Every tab opens its socket to the us authority; waits until each is open. */
async function connectAll(pages) {
  for (const p of pages) p.evaluate(() => window.veto.connect());
  for (const [i, p] of pages.entries())
    await until(() => p.evaluate(() => window.__ws.some((w) => w.opened)), 5000, `tab ${i}: socket to the us authority open`).catch(async (e) => {
      throw new Error(`${e.message}: ${JSON.stringify(await state(p))}\n${logs()}`);
    });
}

/** Waits for the forced logout in every tab; returns each tab's logouts. */
async function forcedLogouts(pages, ms, what) {
  const out = [];
  for (const [i, p] of pages.entries()) {
    await until(() => p.evaluate(() => window.logouts.length > 0), ms, `tab ${i}: ${what}`).catch(async (e) => {
      throw new Error(`${e.message}: ${JSON.stringify(await state(p))}\n${logs()}`);
    });
  }
  await sleep(300); // nothing more arrives (once per tab, no reconnect)
  for (const p of pages) out.push(await p.evaluate(() => window.logouts));
  return out;
}

// A tab whose logout came from the other tab's broadcast closes its own socket at once, and a
// browser drops messages arriving after close(): that tab may not see the {type: revoked} itself.
const sockets = (p) => p.evaluate(() => window.__ws.map((w) => ({ code: w.code, types: w.messages.map((m) => JSON.parse(m).type) })));
const envoyStatus = async (token) => (await fetch(env.envoy.base + "/api", { headers: { authorization: "Bearer " + token } })).status;

test("3 regions: login in us, API through Envoy in us 200; a revocation made in eu logs both tabs out (4403) via the us authority's socket", { skip: SKIP }, async () => {
  const { ctx, pages } = await tabs(2, env.auth.us.base);
  const [a, b] = pages;
  const sid = await a.evaluate(() => window.login("alice"));
  const login = env.app.logins.find((l) => l.session_id === sid);
  assert.equal(login.home_region, "us", "the session is homed in us");
  const via0 = (env.app.viaStatuses || []).length;
  assert.equal(await a.evaluate(() => window.api()), 200, `API through Envoy in us\n${logs()}`);
  assert.deepEqual(env.app.viaStatuses.slice(via0), [200], "the call went through Envoy (ext_authz → us sidecar)");
  await until(() => sessionOf(b), 3000, "tokens in tab b");
  assert.equal(await b.evaluate(() => window.api()), 200);
  await connectAll(pages);

  const r = await fetch(env.auth.eu.base + "/v1/revocations", {
    method: "POST",
    headers: { authorization: "Bearer " + h.ADMIN_TOKEN, "content-type": "application/json" },
    body: JSON.stringify({ kind: "session", id: sid, reason: "admin", urgent: true }),
  });
  const ev = await r.json();
  assert.equal(r.status, 202, JSON.stringify(ev));
  assert.equal(ev.origin_region, "eu");
  const revokedAt = Number(ev.revoked_at);
  assert.ok(Number.isFinite(revokedAt) && revokedAt > 1e12, `revoked_at in ms: ${JSON.stringify(ev)}`);

  const all = await forcedLogouts(pages, 5000, "forced logout after the revocation in eu");
  const lags = [];
  let pushed = 0;
  for (const [i, l] of all.entries()) {
    assert.equal(l.length, 1, `tab ${i}: once: ${JSON.stringify(l)}`);
    assert.equal(l[0].forced, true);
    assert.equal(l[0].source, "socket");
    assert.equal(l[0].reason, "admin");
    assert.equal(l[0].sessionId, sid);
    assert.equal(l[0].revokedAt, revokedAt, "the push carries the eu event's revoked_at");
    const socks = await sockets(pages[i]);
    assert.equal(socks.length, 1, `tab ${i}: never reconnects: ${JSON.stringify(socks)}`);
    assert.notEqual(socks[0].code, null, `tab ${i}: the socket is closed: ${JSON.stringify(socks)}`);
    assert.equal(await sessionOf(pages[i]), null);
    lags.push(`${l[0].at - revokedAt} ms${socks[0].types.includes("revoked") ? "" : " (via the other tab's broadcast)"}`);
    pushed += socks[0].code === 4403 && socks[0].types.join() === "revoked" ? 1 : 0;
  }
  assert.ok(pushed >= 1, "at least one tab got the push itself ({type: revoked}, close 4403)");
  // and the API (Envoy → us sidecar) refuses the old access token
  const t0 = Date.now();
  await until(async () => (await envoyStatus(login.access_token)) === 401, 3000, "401 through Envoy in us for the revoked session");
  console.log(`# revocation in eu (revoked_at) → forced-logout handler in 2 tabs (socket to us): ${lags.join(", ")}; Envoy in us refusing: ≤ ${Date.now() - t0} ms after the logouts`);
  for (const p of pages) assert.deepEqual(p.errors, []);
  await ctx.close();
});

test("3 regions: refresh-token reuse (the grand-parent presented in ap) → both tabs logged out, reason refresh_reuse", { skip: SKIP }, async () => {
  const { ctx, pages } = await tabs(2, env.auth.us.base);
  const [a, b] = pages;
  const sid = await a.evaluate(() => window.login("bob"));
  const rt0 = env.app.logins.find((l) => l.session_id === sid).refresh_token;
  await until(() => sessionOf(b), 3000, "tokens in tab b");
  assert.equal(await b.evaluate(() => window.api()), 200);
  await connectAll(pages);

  const refresh = async (region, token) => {
    const r = await fetch(env.auth[region].base + "/v1/token", {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams({ grant_type: "refresh_token", refresh_token: token }),
    });
    return { status: r.status, body: await r.json() };
  };
  // out of band: two rotations at the home (the tabs' own refresh token is rt0 → now a grand-parent)
  const r1 = await refresh("us", rt0);
  assert.equal(r1.status, 200, JSON.stringify(r1.body));
  const r2 = await refresh("us", r1.body.refresh_token);
  assert.equal(r2.status, 200, JSON.stringify(r2.body));
  assert.notEqual(r2.body.refresh_token, r1.body.refresh_token);

  // the thief presents the grand-parent in ap (forwarded to the home, us)
  const t0 = Date.now();
  const thief = await refresh("ap", rt0);
  const tReuse = Date.now() - t0;
  assert.equal(thief.status, 400, JSON.stringify(thief.body));
  assert.equal(thief.body.error, "invalid_grant");
  assert.match(thief.body.error_description || "", /reuse/);

  const all = await forcedLogouts(pages, 5000, "forced logout after refresh reuse");
  const lags = [];
  let pushed = 0;
  for (const [i, l] of all.entries()) {
    assert.equal(l.length, 1, `tab ${i}: once: ${JSON.stringify(l)}`);
    assert.equal(l[0].forced, true);
    assert.equal(l[0].source, "socket");
    assert.equal(l[0].reason, "refresh_reuse");
    assert.equal(l[0].sessionId, sid);
    const socks = await sockets(pages[i]);
    assert.equal(socks.length, 1, `tab ${i}: never reconnects: ${JSON.stringify(socks)}`);
    assert.notEqual(socks[0].code, null, `tab ${i}: the socket is closed: ${JSON.stringify(socks)}`);
    assert.equal(await sessionOf(pages[i]), null);
    assert.equal(typeof l[0].revokedAt, "number", "revoked_at of the reuse revocation");
    lags.push(`${l[0].at - l[0].revokedAt} ms${socks[0].types.includes("revoked") ? "" : " (via the other tab's broadcast)"}`);
    pushed += socks[0].code === 4403 && socks[0].types.join() === "revoked" ? 1 : 0;
  }
  assert.ok(pushed >= 1, "at least one tab got the push itself ({type: revoked}, close 4403)");
  // every refresh token of the session is dead now, the newest included, in any region
  assert.equal((await refresh("eu", r2.body.refresh_token)).status, 400, "newest refresh token after reuse");
  console.log(`# reuse answered by ap in ${tReuse} ms; revoked_at → forced-logout handler in 2 tabs (socket to us): ${lags.join(", ")}`);
  for (const p of pages) assert.deepEqual(p.errors, []);
  await ctx.close();
});
