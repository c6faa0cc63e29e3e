// The client's behaviour in node with a fake authority and API (fetch), real node
// BroadcastChannels between "tabs", a fake Web Locks and a fake WebSocket.
import { test, afterEach } from "node:test";
import assert from "node:assert/strict";
import { createClient, createChannelLock, VetoError } from "../../clients/web/veto.js";

const AUTH = "https://auth.test";
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
let seq = 0;
/** Resolves once `cond()` holds (polled), or fails after `ms`. */
async function until(cond, ms = 1000, what = "waiting") {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) assert.fail(`timed out: ${what}`);
    await sleep(2);
  }
}

/** A fake authority + API: rotation with a grace for the previous token, reuse = revoke. */
function fakeWorld({ delay = 20, ttl = 600 } = {}) {
  const w = { refreshes: 0, logouts: 0, api: 0, sessions: new Map(), fail503: 0, log: [] };
  let n = 0;
  w.login = (sub = "u") => {
    const sid = "sid" + ++n;
    const s = { sid, gen: 1, rt: `rt-${sid}-1`, at: `at-${sid}-1`, prev: null, alive: true };
    w.sessions.set(sid, s);
    return { access_token: s.at, token_type: "Bearer", expires_in: ttl, refresh_token: s.rt, session_id: sid, home_region: "us" };
  };
  const resp = (s) => ({ access_token: s.at, token_type: "Bearer", expires_in: ttl, refresh_token: s.rt, session_id: s.sid, home_region: "us" });
  const json = (status, body, headers = {}) => new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json", ...headers } });
  w.fetch = async (input, init) => {
    const req = input instanceof Request ? input : new Request(input, init);
    const url = new URL(req.url);
    await sleep(delay);
    if (url.origin === AUTH && url.pathname === "/v1/token") {
      w.refreshes++;
      if (w.fail503 > 0) {
        w.fail503--;
        return json(503, { error: "temporarily_unavailable" }, { "retry-after": "0" });
      }
      const f = new URLSearchParams(await req.text());
      const rt = f.get("refresh_token");
      const s = [...w.sessions.values()].find((x) => x.rt === rt || x.prev?.rt === rt);
      if (!s || !s.alive) return json(400, { error: "invalid_grant" });
      if (s.prev?.rt === rt) {
        w.log.push("grace");
        return json(200, resp(s)); // the identical successor
      }
      s.prev = { rt: s.rt };
      s.gen++;
      s.rt = `rt-${s.sid}-${s.gen}`;
      s.at = `at-${s.sid}-${s.gen}`;
      return json(200, resp(s));
    }
    if (url.origin === AUTH && url.pathname === "/v1/logout") {
      w.logouts++;
      const f = new URLSearchParams(await req.text());
      for (const s of w.sessions.values()) if (s.rt === f.get("token")) s.alive = false;
      return new Response(null, { status: 200 });
    }
    if (url.pathname === "/api") {
      w.api++;
      const a = req.headers.get("authorization") || "";
      const ok = [...w.sessions.values()].some((s) => s.alive && a === "Bearer " + s.at);
      return ok ? json(200, { ok: true, body: req.method === "POST" ? await req.text() : null }) : json(401, { error: "invalid_token" });
    }
    return new Response("not found", { status: 404 });
  };
  return w;
}

/** A Web Locks stand-in shared by the tabs of one test (exclusive locks, ifAvailable). */
function fakeLocks() {
  const held = new Map();
  return {
    async request(name, opts, cb) {
      if (typeof opts === "function") [cb, opts] = [opts, {}];
      if (opts.ifAvailable && held.has(name)) return cb(null);
      while (held.has(name)) await held.get(name);
      let release;
      held.set(name, new Promise((r) => (release = r)));
      try {
        return await cb({ name });
      } finally {
        held.delete(name);
        release();
      }
    },
  };
}

const open = [];
function tab(world, extraDeps = {}, opts = {}) {
  const c = createClient(
    { authority: AUTH, storageKey: opts.storageKey ?? "test-" + seq, fetch: world.fetch, onLogout: opts.onLogout },
    { BroadcastChannel, Request, Headers, helloMs: 50, ...extraDeps },
  );
  open.push(c);
  return c;
}
afterEach(() => {
  while (open.length) open.pop().close();
  seq++;
});

for (const mode of ["BroadcastChannel lock", "Web Locks"]) {
  test(`two tabs hit a 401 at once: one refresh, both retried requests succeed (${mode})`, async () => {
    const w = fakeWorld({ delay: 30 });
    const locks = mode === "Web Locks" ? fakeLocks() : null;
    const a = tab(w, { locks });
    const b = tab(w, { locks });
    const c = tab(w, { locks });
    a.setTokens(w.login());
    await until(() => b.session && c.session, 3000, "tokens shared across tabs");
    // The access token is rejected from now on (e.g. the API's clock says it expired).
    const s = [...w.sessions.values()][0];
    s.at = "rejected";
    const [ra, rb, rc] = await Promise.all([a.fetch("https://api.test/api"), b.fetch("https://api.test/api"), c.fetch("https://api.test/api")]);
    s.at = `at-${s.sid}-${s.gen}`;
    // after the rotation the current token is at-sid-2 (set by the refresh), so the retries passed
    assert.deepEqual([ra.status, rb.status, rc.status], [200, 200, 200]);
    assert.equal(w.refreshes, 1, "exactly one refresh reached the authority");
    assert.deepEqual(w.log, [], "no grace replay needed");
    assert.equal(w.api, 6, "each request sent once, retried once");
  });
}

/**
 * node's BroadcastChannel whose "tokens" messages are held back while `gate.hold` is set and
 * delivered by `gate.release()`: a browser whose lock grant overtakes the channel message.
 */
function gatedChannel() {
  const queue = [];
  const gate = { hold: false, release() {
    gate.hold = false;
    for (const f of queue.splice(0)) f();
  } };
  class Gated extends BroadcastChannel {
    postMessage(m) {
      const send = () => {
        try {
          super.postMessage(m);
        } catch {
          /* closed meanwhile */
        }
      };
      if (gate.hold && m?.t === "tokens") queue.push(send);
      else send();
    }
  }
  return { gate, Gated };
}

for (const mode of ["BroadcastChannel lock", "Web Locks"]) {
  test(`a 401 just after another tab's refresh, before its tokens arrive: still one refresh (${mode})`, async () => {
    const w = fakeWorld({ delay: 5 });
    const { gate, Gated } = gatedChannel();
    const deps = { locks: mode === "Web Locks" ? fakeLocks() : null, BroadcastChannel: Gated };
    const a = tab(w, deps);
    const b = tab(w, deps);
    a.setTokens(w.login());
    await until(() => b.session, 3000, "tokens in tab b");
    const s = [...w.sessions.values()][0];
    s.at = "rejected";
    gate.hold = true;
    // a: 401, refresh, retry; its new tokens stay on the way to b
    assert.equal((await a.fetch("https://api.test/api")).status, 200);
    s.at = `at-${s.sid}-${s.gen}`;
    const api = w.api;
    const rb = b.fetch("https://api.test/api");
    // b has its 401 (and has decided what to do about it) before the tokens arrive
    await until(() => w.api > api, 3000, "b's first request answered");
    gate.release();
    assert.equal((await rb).status, 200);
    assert.equal(w.refreshes, 1, `one refresh reached the authority (grace replays: ${w.log.length})`);
  });
}

test("within one tab, concurrent 401s coalesce into one refresh; the body is sent again", async () => {
  const w = fakeWorld();
  const a = tab(w, {}, { storageKey: null });
  a.setTokens(w.login());
  const s = [...w.sessions.values()][0];
  s.at = "rejected";
  const rs = await Promise.all([1, 2, 3].map((i) => a.fetch("https://api.test/api", { method: "POST", body: "payload" + i })));
  assert.deepEqual(rs.map((r) => r.status), [200, 200, 200]);
  const bodies = await Promise.all(rs.map((r) => r.json()));
  assert.deepEqual(bodies.map((b) => b.body), ["payload1", "payload2", "payload3"]);
  assert.equal(w.refreshes, 1);
});

test("refresh shortly before expiry, not after every call", async () => {
  let clock = 1_000_000;
  const w = fakeWorld({ delay: 1, ttl: 600 });
  const a = tab(w, { now: () => clock });
  a.setTokens(w.login());
  assert.equal((await a.fetch("https://api.test/api")).status, 200);
  clock += 530_000; // 70 s left: not due (margin 60 s)
  assert.equal((await a.fetch("https://api.test/api")).status, 200);
  assert.equal(w.refreshes, 0);
  clock += 15_000; // 55 s left: due
  assert.equal((await a.fetch("https://api.test/api")).status, 200);
  assert.equal(w.refreshes, 1);
  assert.equal(w.api, 3, "no 401 round trip");
});

test("invalid_grant on refresh logs every tab out, the callback once per tab", async () => {
  const w = fakeWorld();
  const calls = { a: [], b: [] };
  const a = tab(w, {}, { onLogout: (i) => calls.a.push(i) });
  const b = tab(w, {}, { onLogout: (i) => calls.b.push(i) });
  a.setTokens(w.login());
  await until(() => b.session, 3000, "tokens in tab b");
  const s = [...w.sessions.values()][0];
  s.alive = false; // logged out elsewhere (another device, an admin)
  const [ra, rb] = await Promise.all([a.fetch("https://api.test/api"), b.fetch("https://api.test/api")]);
  assert.deepEqual([ra.status, rb.status], [401, 401], "the original 401 comes back");
  await sleep(20);
  assert.equal(calls.a.length, 1);
  assert.equal(calls.b.length, 1);
  assert.equal(calls.a[0].reason, "invalid_grant");
  assert.equal(calls.a[0].forced, true);
  assert.equal(calls.b[0].reason, "invalid_grant");
  assert.equal(calls.b[0].sessionId, s.sid);
  assert.equal(a.session, null);
  assert.equal(b.session, null);
  assert.equal(w.refreshes, 1);
  // a late tokens broadcast of that session is not adopted again
  assert.equal(await a.getAccessToken(), null);
});

test("logout(): POST /v1/logout once, every tab cleared and told", async () => {
  const w = fakeWorld();
  const seen = [];
  const a = tab(w, {}, { onLogout: (i) => seen.push(["a", i.reason, i.forced]) });
  const b = tab(w, {}, { onLogout: (i) => seen.push(["b", i.reason, i.forced]) });
  a.setTokens(w.login());
  await until(() => b.session, 3000, "tokens in tab b");
  await a.logout();
  await sleep(20);
  assert.equal(w.logouts, 1);
  assert.deepEqual(seen.sort(), [["a", "logout", false], ["b", "logout", false]]);
  assert.equal(b.session, null);
  const r = await b.fetch("https://api.test/api");
  assert.equal(r.status, 401, "sent without a bearer");
  assert.equal(w.refreshes, 0);
});

test("a new tab gets the tokens from an open tab; storage survives a reload", async () => {
  const w = fakeWorld();
  const a = tab(w, {}, { storageKey: null });
  a.setTokens(w.login());
  const b = tab(w, {}, { storageKey: null }); // opened later
  assert.equal((await b.fetch("https://api.test/api")).status, 200);
  const store = new Map();
  const storage = { getItem: (k) => store.get(k) ?? null, setItem: (k, v) => store.set(k, v), removeItem: (k) => store.delete(k) };
  const c = tab(w, { storage, BroadcastChannel: undefined }, { storageKey: "persist" });
  c.setTokens(w.login());
  c.close();
  const d = tab(w, { storage, BroadcastChannel: undefined }, { storageKey: "persist" });
  assert.equal((await d.fetch("https://api.test/api")).status, 200);
  await d.logout();
  assert.equal(store.has("persist"), false);
});

test("503 on refresh is retried; a persistent 503 rejects without logging out", async () => {
  const w = fakeWorld({ delay: 1 });
  const out = [];
  const a = tab(w, {}, { onLogout: (i) => out.push(i) });
  a.setTokens(w.login());
  const s = [...w.sessions.values()][0];
  s.at = "rejected";
  w.fail503 = 1;
  assert.equal((await a.fetch("https://api.test/api")).status, 200);
  assert.equal(w.refreshes, 2);
  s.at = "rejected";
  w.fail503 = 10;
  await assert.rejects(a.fetch("https://api.test/api"), (e) => e instanceof VetoError && e.code === "temporarily_unavailable");
  assert.deepEqual(out, []);
  assert.ok(a.session);
});

test("nothing is written to the console", async () => {
  const orig = {};
  const written = [];
  for (const k of ["log", "info", "warn", "error", "debug", "trace"]) {
    orig[k] = console[k];
    console[k] = (...x) => written.push(x);
  }
  try {
    const w = fakeWorld({ delay: 1 });
    const a = tab(w);
    a.setTokens(w.login());
    [...w.sessions.values()][0].at = "rejected";
    await a.fetch("https://api.test/api");
    [...w.sessions.values()][0].alive = false;
    [...w.sessions.values()][0].at = "rejected";
    await a.fetch("https://api.test/api");
    await a.logout();
  } finally {
    Object.assign(console, orig);
  }
  assert.deepEqual(written, []);
});

test("channel lock: many claimants, one holder at a time", async () => {
  const name = "lock-test-" + seq;
  const chans = [];
  const locks = [];
  for (let i = 0; i < 4; i++) {
    const ch = new BroadcastChannel(name);
    chans.push(ch);
    const l = createChannelLock({ id: "t" + i, post: (m) => ch.postMessage(m), settleMs: 15 });
    ch.onmessage = (ev) => l.onMessage(ev.data);
    locks.push(l);
  }
  let inside = 0;
  let max = 0;
  let runs = 0;
  const contended = [];
  await Promise.all(
    locks.flatMap((l) =>
      [0, 1].map(() =>
        l.request("x", async (c) => {
          inside++;
          max = Math.max(max, inside);
          contended.push(c);
          await sleep(10);
          runs++;
          inside--;
        }),
      ),
    ),
  );
  for (const ch of chans) ch.close();
  assert.equal(max, 1);
  assert.equal(runs, 8);
  assert.ok(contended.includes(true));
});

// ---------------------------------------------------------------------------------------------
// The socket, with a fake WebSocket
// ---------------------------------------------------------------------------------------------

function fakeWS() {
  const sockets = [];
  class WS {
    constructor(url, protocols) {
      this.url = url;
      this.protocols = protocols;
      this.readyState = 0;
      sockets.push(this);
    }
    accept() {
      this.readyState = 1;
      this.protocol = "veto.v1";
      this.onopen?.({});
    }
    send() {}
    message(obj) {
      this.onmessage?.({ data: JSON.stringify(obj) });
    }
    serverClose(code) {
      if (this.readyState === 3) return;
      this.readyState = 3;
      this.onclose?.({ code, reason: "" });
    }
    close(code = 1000) {
      this.closedByClient = code;
      this.serverClose(1005);
    }
  }
  return { WS, sockets };
}

/** setTimeout that records delays and runs them immediately (keeps the schedule observable). */
function recordingTimers() {
  const delays = [];
  return {
    delays,
    setTimeout: (fn, ms) => {
      if (ms >= 200) delays.push(ms);
      return setTimeout(fn, ms >= 200 ? 0 : ms);
    },
    clearTimeout: (t) => clearTimeout(t),
  };
}

test("socket: subprotocols carry the token, never the URL; 4403 logs every tab out, no reconnect", async () => {
  const w = fakeWorld({ delay: 1 });
  const { WS, sockets } = fakeWS();
  const out = { a: [], b: [] };
  const a = tab(w, { WebSocket: WS }, { onLogout: (i) => out.a.push(i) });
  const b = tab(w, { WebSocket: WS }, { onLogout: (i) => out.b.push(i) });
  const login = w.login();
  a.setTokens(login);
  await sleep(10);
  a.connect();
  b.connect();
  await until(() => sockets.length === 2);
  for (const s of sockets) {
    assert.equal(s.url, "wss://auth.test/v1/ws");
    assert.ok(!s.url.includes(login.access_token));
    assert.deepEqual(s.protocols, ["veto.v1", "veto.bearer." + login.access_token]);
    s.accept();
  }
  sockets[0].message({ type: "revoked", kind: "session", reason: "admin", revoked_at: 123, origin_region: "us" });
  sockets[0].serverClose(4403);
  await sleep(20);
  sockets[1].message({ type: "revoked", kind: "session", reason: "admin", revoked_at: 123, origin_region: "us" });
  sockets[1].serverClose(4403);
  await sleep(50);
  assert.equal(out.a.length, 1);
  assert.equal(out.b.length, 1);
  assert.deepEqual(
    { reason: out.a[0].reason, kind: out.a[0].kind, revokedAt: out.a[0].revokedAt, forced: out.a[0].forced },
    { reason: "admin", kind: "session", revokedAt: 123, forced: true },
  );
  assert.equal(out.b[0].reason, "admin");
  assert.equal(sockets.length, 2, "never reconnects after 4403");
});

test("socket: 4401 → refresh, then reconnect with the new token at once", async () => {
  const w = fakeWorld({ delay: 1 });
  const { WS, sockets } = fakeWS();
  const timers = recordingTimers();
  const a = tab(w, { WebSocket: WS, timers });
  a.setTokens(w.login());
  a.connect();
  await until(() => sockets.length === 1);
  sockets[0].accept();
  sockets[0].message({ type: "expired" });
  sockets[0].serverClose(4401);
  await until(() => sockets.length === 2);
  assert.equal(w.refreshes, 1);
  assert.equal(sockets[1].protocols[1], "veto.bearer.at-sid1-2");
  assert.deepEqual(timers.delays, [], "no backoff");
  a.close();
});

test("socket: backoff schedule on 1006/1012/4429, reset after a stable connection", async () => {
  const w = fakeWorld({ delay: 1 });
  const { WS, sockets } = fakeWS();
  const timers = recordingTimers();
  let clock = 0;
  const a = createClient({ authority: AUTH, fetch: w.fetch }, { WebSocket: WS, timers, random: () => 0, now: () => clock, Request, Headers });
  open.push(a);
  a.setTokens(w.login());
  a.connect();
  await until(() => sockets.length === 1);
  sockets[0].accept();
  sockets[0].serverClose(1006); // was open: not a refused handshake
  await until(() => sockets.length === 2);
  sockets[1].accept();
  sockets[1].serverClose(1012);
  await until(() => sockets.length === 3);
  sockets[2].accept();
  sockets[2].serverClose(4429);
  await until(() => sockets.length === 4);
  sockets[3].accept();
  clock += 20_000; // stayed up: the backoff starts again
  sockets[3].serverClose(1001);
  await until(() => sockets.length === 5);
  assert.deepEqual(timers.delays, [250, 1000, 10000, 250]);
  // handshake refused twice before open (401/403 in a browser look like 1006): one refresh
  sockets[4].serverClose(1006);
  await until(() => sockets.length === 6);
  sockets[5].serverClose(1006);
  await until(() => sockets.length === 7);
  assert.equal(w.refreshes, 1);
  assert.equal(sockets[6].protocols[1], "veto.bearer.at-sid1-2");
  const stop = a.connect();
  stop();
  await sleep(10);
  assert.equal(sockets.length, 7, "stopped");
});
