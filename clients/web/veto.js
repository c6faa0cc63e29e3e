// Veto web client: bearer fetch with single-flight refresh across tabs, and the forced-logout
// socket of the Veto authority. An ES module with no dependencies and no build step.
//
//   import { createVeto } from "./veto.js";
//   const veto = createVeto({ authority: "https://auth.example.com", onLogout: (i) => ... });
//   veto.setTokens(await (await fetch("/login", { method: "POST", ... })).json());
//   const r = await veto.fetch("/api/orders");      // bearer attached, 401 → refresh → retry once
//   const stop = veto.connect();                    // forced-logout push socket
//   await veto.logout();                            // every tab logs out
//
// README.md beside this file documents the API, the close codes and the integrations. This
// module never writes to the console: no token (access or refresh) is ever logged.
//
// Everything below the public API is exported too, for the tests and framework adapters: the
// pure logic (expiry math, backoff, close codes, the BroadcastChannel lock) is testable in
// node without a browser, and createClient() takes every browser facility as a dependency.

/** Refresh this long before expiry at most (ms); less for short-lived tokens. */
export const REFRESH_MARGIN_MS = 60_000;
/** How many times one refresh is attempted when the authority says "retry later". */
export const REFRESH_ATTEMPTS = 3;
/** A single refresh request gives up after this long (the lock is never held forever). */
export const REFRESH_TIMEOUT_MS = 10_000;
/**
 * A tab that refreshed keeps the cross-tab lock this long after sharing the new tokens (its
 * caller has them at once). Another tab's lock grant can overtake the channel message with the
 * tokens; a tab that asks within this window finds the lock held and waits for the tokens
 * instead of refreshing a second time with the rotated-out refresh token.
 */
export const REFRESH_LINGER_MS = 150;
/** A socket that stayed open this long resets the reconnect backoff. */
export const STABLE_SOCKET_MS = 10_000;

/** An error of this client: `code` is an RFC 6749 error code or one of this module's own. */
export class VetoError extends Error {
  constructor(code, message, extra = {}) {
    super(message || code);
    this.name = "VetoError";
    this.code = code;
    if (extra.status !== undefined) this.status = extra.status;
    if (extra.retryAfterMs !== undefined) this.retryAfterMs = extra.retryAfterMs;
  }
}

// ---------------------------------------------------------------------------------------------
// Pure logic
// ---------------------------------------------------------------------------------------------

/**
 * The stored form of an authority token response, received at `now` (ms). `expires_in` is
 * relative, so the expiry is on this machine's clock whatever the server's clock says.
 */
export function tokensFromResponse(r, now) {
  if (!r || typeof r !== "object") throw new TypeError("veto: token response must be an object");
  if (typeof r.access_token !== "string" || r.access_token === "")
    throw new TypeError("veto: token response without access_token");
  if (typeof r.refresh_token !== "string" || r.refresh_token === "")
    throw new TypeError("veto: token response without refresh_token");
  const ttl = Number(r.expires_in);
  if (!Number.isFinite(ttl) || ttl <= 0) throw new TypeError("veto: token response without a positive expires_in");
  return {
    access_token: r.access_token,
    refresh_token: r.refresh_token,
    issued_at: now,
    expires_at: now + ttl * 1000,
    session_id: typeof r.session_id === "string" ? r.session_id : null,
    home_region: typeof r.home_region === "string" ? r.home_region : null,
  };
}

/** How long before `expires_at` a token is refreshed: a fifth of its life, 1 s to 60 s. */
export function refreshMargin(tokens) {
  const life = Math.max(0, tokens.expires_at - tokens.issued_at);
  return Math.min(REFRESH_MARGIN_MS, Math.max(1000, life / 5));
}

/** True when the access token should be refreshed before it is sent. */
export function refreshDue(tokens, now) {
  return !!tokens && now >= tokens.expires_at - refreshMargin(tokens);
}

/** True once the access token is past its expiry (sending it is pointless). */
export function isExpired(tokens, now) {
  return !tokens || now >= tokens.expires_at;
}

/**
 * Jittered exponential backoff ("equal jitter"): attempt 0, 1, 2, ... waits between half and
 * all of min(cap, base·2^attempt). `random` returns [0, 1).
 */
export function backoffDelay(attempt, { base = 500, cap = 30_000, random = Math.random } = {}) {
  const n = Math.max(0, Math.min(30, Math.floor(attempt)));
  const d = Math.min(cap, base * 2 ** n);
  return Math.round(d / 2 + random() * (d / 2));
}

/** Backoff parameters by situation. */
export const BACKOFF = {
  network: { base: 500, cap: 30_000 }, // 1001, 1006, 1011, network loss, refused handshakes
  restart: { base: 1_000, cap: 30_000 }, // 1012: the replica drains; any other replica will do
  crowded: { base: 5_000, cap: 60_000 }, // 4429: too many sockets for this session
};

/**
 * What to do when the socket closes with `code`:
 *   logout    — 4403 revoked: forced logout, never reconnect
 *   refresh   — 4401 expired: refresh the access token, then reconnect at once
 *   reconnect — everything else, after backoff of the given kind
 */
export function closeAction(code) {
  switch (code) {
    case 4403:
      return { action: "logout" };
    case 4401:
      return { action: "refresh" };
    case 4429:
      return { action: "reconnect", backoff: "crowded" };
    case 1012:
      return { action: "reconnect", backoff: "restart" };
    default:
      return { action: "reconnect", backoff: "network" };
  }
}

/** A server → client socket message, or null for anything that is not one. */
export function parseSocketMessage(data) {
  if (typeof data !== "string" || data.length > 65536) return null;
  let m;
  try {
    m = JSON.parse(data);
  } catch {
    return null;
  }
  if (!m || typeof m !== "object" || typeof m.type !== "string") return null;
  return m;
}

/** The logout information of a `revoked` socket message. */
export function revokedInfo(m) {
  const info = { reason: typeof m?.reason === "string" ? m.reason : "revoked", forced: true, source: "socket" };
  if (typeof m?.kind === "string") info.kind = m.kind;
  if (typeof m?.revoked_at === "number") info.revokedAt = m.revoked_at;
  if (typeof m?.origin_region === "string") info.originRegion = m.origin_region;
  return info;
}

/** Retry-After (delta seconds or an HTTP date) in ms, or null. */
export function parseRetryAfter(value, now) {
  if (value == null || value === "") return null;
  const s = String(value).trim();
  if (/^\d+$/.test(s)) return Number(s) * 1000;
  const t = Date.parse(s);
  return Number.isNaN(t) ? null : Math.max(0, t - now);
}

/** ws(s):// URL of the authority's push socket. */
export function socketUrl(authority) {
  const u = new URL("/v1/ws", authority.replace(/\/+$/, "") + "/");
  u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
  return u.toString();
}

/**
 * A mutual-exclusion lock across the tabs of one origin over a BroadcastChannel, for browsers
 * without Web Locks. A claimant announces a claim and waits `settleMs`: the lowest claim
 * (time, then id) wins; a holder answers later claims with `held`; losers withdraw and wait for
 * the holder's `release` (or its lease to run out, for a tab that died holding it).
 *
 * `post(msg)` sends to the other tabs; feed every received lock message to `onMessage`.
 * `request(name, fn)` runs `fn(contended)` holding the lock and returns its result;
 * `contended` is true when another tab held or claimed the lock meanwhile.
 */
export function createChannelLock({ id, post, now = Date.now, settleMs = 40, leaseMs = 15_000, timers = globalThis }) {
  const names = new Map(); // name → state
  const state = (name) => {
    let s = names.get(name);
    if (!s) {
      s = { holding: false, claim: null, lost: false, other: null, otherUntil: 0, wake: new Set(), local: Promise.resolve() };
      names.set(name, s);
    }
    return s;
  };
  const less = (a, b) => a.ts < b.ts || (a.ts === b.ts && a.id < b.id);
  const wakeAll = (s) => {
    for (const w of [...s.wake]) w();
  };
  const waitChange = (s, ms) =>
    new Promise((resolve) => {
      const done = (why) => {
        timers.clearTimeout(t);
        s.wake.delete(done);
        resolve(why);
      };
      const t = timers.setTimeout(() => done("timeout"), Math.max(0, ms));
      s.wake.add(done);
    });
  const otherActive = (s) => s.other !== null && now() < s.otherUntil;

  async function acquire(name) {
    const s = state(name);
    let contended = false;
    for (;;) {
      while (otherActive(s)) {
        contended = true;
        const other = s.other;
        if ((await waitChange(s, s.otherUntil - now())) === "timeout" && s.other === other) {
          s.other = null; // the lease ran out: that tab is gone
          s.otherUntil = 0;
        }
      }
      s.other = null;
      s.claim = { ts: now(), id };
      s.lost = false;
      post({ t: "lock", op: "claim", name, id, ts: s.claim.ts });
      let settled = false;
      const t = timers.setTimeout(() => {
        settled = true;
        wakeAll(s);
      }, settleMs);
      while (!s.lost && !settled) await waitChange(s, settleMs);
      timers.clearTimeout(t);
      if (!s.lost) {
        s.claim = null;
        s.holding = true;
        return contended;
      }
      s.claim = null;
      contended = true;
      post({ t: "lock", op: "yield", name, id });
    }
  }

  function onMessage(m) {
    if (!m || m.t !== "lock" || m.id === id || typeof m.name !== "string") return;
    const s = state(m.name);
    const them = { ts: Number(m.ts), id: String(m.id) };
    switch (m.op) {
      case "claim":
        if (s.holding) {
          post({ t: "lock", op: "held", name: m.name, id });
          return;
        }
        if (s.claim && less(s.claim, them)) return; // ours wins; they will see it
        if (!otherActive(s) || less(them, { ts: s.otherTs ?? Infinity, id: s.other })) {
          s.other = them.id;
          s.otherTs = them.ts;
          s.otherUntil = now() + leaseMs;
        }
        if (s.claim) s.lost = true;
        wakeAll(s);
        return;
      case "held":
        s.other = them.id;
        s.otherTs = -Infinity;
        s.otherUntil = now() + leaseMs;
        if (s.claim) s.lost = true;
        wakeAll(s);
        return;
      case "release":
      case "yield":
        if (s.other === them.id) {
          s.other = null;
          s.otherUntil = 0;
        }
        wakeAll(s);
        return;
    }
  }

  function request(name, fn) {
    const s = state(name);
    const run = s.local.then(async () => {
      const contended = await acquire(name);
      try {
        return await fn(contended);
      } finally {
        s.holding = false;
        post({ t: "lock", op: "release", name, id });
      }
    });
    s.local = run.catch(() => {});
    return run;
  }

  return { request, onMessage };
}

/**
 * The cross-tab lock: Web Locks where the browser has them, else the BroadcastChannel lock,
 * else (no other tab can be reached) a lock within this tab. `request(name, fn)` runs
 * `fn(contended)`.
 */
export function createTabLock({ locks, channelLock }) {
  if (locks && typeof locks.request === "function") {
    const busy = Symbol("busy");
    return {
      async request(name, fn) {
        const r = await locks.request(name, { ifAvailable: true }, (l) => (l ? fn(false) : busy));
        return r === busy ? locks.request(name, () => fn(true)) : r;
      },
      onMessage() {},
    };
  }
  if (channelLock) return channelLock;
  let chain = Promise.resolve();
  return {
    request(name, fn) {
      const run = chain.then(() => fn(false));
      chain = run.catch(() => {});
      return run;
    },
    onMessage() {},
  };
}

// ---------------------------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------------------------

function randomId(random) {
  return Math.floor(random() * 2 ** 52).toString(36) + Math.floor(random() * 2 ** 52).toString(36);
}

/**
 * The client with every outside facility injected (node tests pass fakes; createVeto passes the
 * browser's):
 *   fetch, Request, Headers, WebSocket, BroadcastChannel (constructor), locks (Web Locks),
 *   storage (localStorage-like), now, random, timers ({setTimeout, clearTimeout}),
 *   helloMs (how long a new tab waits for another tab's tokens)
 */
export function createClient(options = {}, deps = {}) {
  if (typeof options.authority !== "string" || !/^https?:\/\//.test(options.authority))
    throw new TypeError("veto: options.authority must be the authority's http(s) URL");
  const authority = options.authority.replace(/\/+$/, "");
  const now = deps.now || Date.now;
  const random = deps.random || Math.random;
  const timers = deps.timers || globalThis;
  const doFetch = options.fetch || deps.fetch;
  const RequestCtor = deps.Request || globalThis.Request;
  const HeadersCtor = deps.Headers || globalThis.Headers;
  const storage = options.storageKey ? deps.storage || null : null;
  const storageKey = options.storageKey || null;
  const name = "veto:" + (storageKey || authority);
  const tabId = randomId(random);
  const sleep = (ms) => new Promise((r) => timers.setTimeout(r, ms));

  let tokens = null;
  let inflight = null;
  const listeners = new Set();
  const dead = new Set(); // sessions logged out here: late broadcasts of them are ignored
  const tokenWaiters = new Set();
  if (typeof options.onLogout === "function") listeners.add(options.onLogout);

  // ---- cross-tab channel ----
  let channel = null;
  if (deps.BroadcastChannel) {
    try {
      channel = new deps.BroadcastChannel(name);
    } catch {
      channel = null;
    }
  }
  const post = (m) => {
    if (channel) {
      try {
        channel.postMessage({ ...m, from: tabId });
      } catch {
        /* closed */
      }
    }
  };
  const channelLock = channel
    ? createChannelLock({ id: tabId, post: (m) => post(m), now, timers })
    : null;
  const lock = createTabLock({ locks: deps.locks, channelLock });

  function persist() {
    if (!storage) return;
    try {
      if (tokens) storage.setItem(storageKey, JSON.stringify(tokens));
      else storage.removeItem(storageKey);
    } catch {
      /* quota, privacy mode: memory and the channel still work */
    }
  }
  function loadStored() {
    if (!storage) return null;
    try {
      const t = JSON.parse(storage.getItem(storageKey) || "null");
      if (t && typeof t.access_token === "string" && typeof t.refresh_token === "string" && typeof t.expires_at === "number")
        return t;
    } catch {
      /* ignore a bad entry */
    }
    return null;
  }

  /** Adopts `t` if it is newer than what this tab holds. True when adopted. */
  function adopt(t, { broadcast }) {
    if (!t || (t.session_id && dead.has(t.session_id))) return false;
    if (tokens && t.issued_at < tokens.issued_at) return false;
    const changed = !tokens || tokens.access_token !== t.access_token;
    tokens = t;
    persist();
    if (broadcast) post({ t: "tokens", tokens: t });
    if (changed) {
      for (const w of [...tokenWaiters]) w();
      socket.tokensChanged();
    }
    return changed;
  }

  function waitTokens(ms, from) {
    return new Promise((resolve) => {
      const done = () => {
        timers.clearTimeout(timer);
        tokenWaiters.delete(check);
        resolve();
      };
      const check = () => {
        if (tokens !== from) done();
      };
      const timer = timers.setTimeout(done, ms);
      tokenWaiters.add(check);
    });
  }

  function fire(info) {
    for (const cb of [...listeners]) {
      try {
        cb(info);
      } catch (e) {
        timers.setTimeout(() => {
          throw e;
        }, 0);
      }
    }
  }

  /**
   * Ends the session `info.sessionId` in this tab (and, with broadcast, in every tab): the
   * tokens go, the socket stops, the callbacks run once in each tab that held the session.
   */
  function endSession(info, { broadcast }) {
    const sid = info.sessionId ?? tokens?.session_id ?? null;
    if (sid) dead.add(sid);
    const held = !!tokens && (sid === null || tokens.session_id === sid || !tokens.session_id);
    if (broadcast) post({ t: "logout", info: { ...info, sessionId: sid } });
    if (!held) return false;
    tokens = null;
    persist();
    for (const w of [...tokenWaiters]) w();
    socket.sessionEnded();
    fire({ ...info, sessionId: sid });
    return true;
  }

  // ---- refresh ----
  async function postForm(path, params) {
    const body = new URLSearchParams(params).toString();
    const init = {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body,
      credentials: "omit",
      cache: "no-store",
      mode: "cors",
    };
    if (typeof AbortSignal !== "undefined" && typeof AbortSignal.timeout === "function")
      init.signal = AbortSignal.timeout(REFRESH_TIMEOUT_MS);
    return doFetch(authority + path, init);
  }

  async function errorOf(res) {
    try {
      const j = await res.json();
      if (j && typeof j.error === "string") return j.error;
    } catch {
      /* not JSON */
    }
    return res.status >= 500 ? "temporarily_unavailable" : "invalid_request";
  }

  /** One refresh against the authority with `current`, retried on "retry later". */
  async function refreshAtAuthority(current) {
    let last = null;
    for (let i = 0; i < REFRESH_ATTEMPTS; i++) {
      if (i > 0) await sleep(Math.min(5000, Math.max(250, last?.retryAfterMs ?? backoffDelay(i - 1, { base: 400, random }))));
      let res;
      try {
        res = await postForm("/v1/token", { grant_type: "refresh_token", refresh_token: current.refresh_token });
      } catch {
        last = new VetoError("temporarily_unavailable", "the authority could not be reached");
        continue;
      }
      if (res.ok) {
        const t = tokensFromResponse(await res.json(), now());
        if (!t.session_id) t.session_id = current.session_id;
        return t;
      }
      const code = await errorOf(res);
      if (code === "invalid_grant") throw new VetoError("invalid_grant", "the session has ended", { status: res.status });
      if (res.status === 503 || res.status >= 500 || res.status === 429) {
        const ra = parseRetryAfter(res.headers?.get?.("retry-after"), now());
        last = new VetoError("temporarily_unavailable", "the authority asks to retry later", {
          status: res.status,
          ...(ra !== null ? { retryAfterMs: ra } : {}),
        });
        continue;
      }
      throw new VetoError(code, "refresh refused", { status: res.status });
    }
    throw last;
  }

  /**
   * Refreshes unless the access token `stale` was already replaced (by this or another tab):
   * one refresh at a time in this tab, one across tabs (the lock), and a tab that waited for
   * the lock uses the tokens the holder shared instead of refreshing again. Resolves to the
   * current access token; rejects with VetoError (`invalid_grant`: the session is gone and
   * every tab has been logged out; `no_session`; `temporarily_unavailable`).
   */
  function refresh(stale) {
    if (inflight) return inflight;
    const from = stale === undefined ? tokens?.access_token : stale;
    let settle;
    const result = new Promise((resolve, reject) => (settle = { resolve, reject }));
    lock
      .request(name + ":refresh", async (contended) => {
        const held = { asked: false };
        try {
          settle.resolve(await refreshHeld(from, contended, held));
        } catch (e) {
          settle.reject(e);
        }
        // Hold the lock a moment after asking the authority (see REFRESH_LINGER_MS).
        if (held.asked) await sleep(REFRESH_LINGER_MS);
      })
      .catch((e) => settle.reject(e));
    inflight = result.finally(() => {
      inflight = null;
    });
    return inflight;
  }

  /**
   * The body of `refresh` while holding the lock: the current access token. Sets `held.asked`
   * when it calls the authority.
   */
  async function refreshHeld(from, contended, held) {
    let cur = tokens;
    if (!cur) throw new VetoError("no_session", "not logged in");
    if (cur.access_token !== from) return cur.access_token;
    if (contended) {
      // The holder shares its tokens before it releases; this is a bound for browsers that
      // deliver the lock grant before the channel message.
      await waitTokens(60, cur);
      if (!tokens) throw new VetoError("no_session", "not logged in");
      if (tokens.access_token !== from) return tokens.access_token;
    }
    const stored = loadStored();
    if (stored && stored.access_token !== from && stored.issued_at > cur.issued_at && adopt(stored, { broadcast: false }))
      return tokens.access_token;
    cur = tokens;
    held.asked = true;
    let t;
    try {
      t = await refreshAtAuthority(cur);
    } catch (e) {
      if (e instanceof VetoError && e.code === "invalid_grant")
        endSession({ reason: "invalid_grant", forced: true, source: "refresh", sessionId: cur.session_id }, { broadcast: true });
      throw e;
    }
    adopt(t, { broadcast: true });
    return t.access_token;
  }

  // ---- new tabs ask the others ----
  let hello = null;
  tokens = loadStored();
  if (tokens && tokens.session_id && dead.has(tokens.session_id)) tokens = null;
  if (channel) {
    channel.onmessage = (ev) => {
      const m = ev?.data;
      if (!m || typeof m !== "object" || m.from === tabId) return;
      switch (m.t) {
        case "tokens":
          if (m.tokens && typeof m.tokens.access_token === "string") adopt(m.tokens, { broadcast: false });
          return;
        case "logout":
          endSession({ ...(m.info || { reason: "logout", forced: false }) }, { broadcast: false });
          return;
        case "hello":
          if (tokens) post({ t: "tokens", tokens });
          return;
        case "lock":
          lock.onMessage(m);
          return;
      }
    };
    if (!tokens) {
      post({ t: "hello" });
      hello = waitTokens(deps.helloMs ?? 150, null).then(() => {
        hello = null;
      });
    }
  }

  /** The access token to send, refreshed first when due; null when not logged in. */
  async function getAccessToken() {
    if (!tokens && hello) await hello;
    const t = tokens;
    if (!t) return null;
    if (!refreshDue(t, now())) return t.access_token;
    try {
      return await refresh(t.access_token);
    } catch (e) {
      if (e instanceof VetoError && (e.code === "invalid_grant" || e.code === "no_session")) return null;
      if (!isExpired(tokens, now())) return tokens.access_token; // still valid: use it, refresh later
      throw e;
    }
  }

  function withBearer(req, token) {
    const h = new HeadersCtor(req.headers);
    h.set("Authorization", "Bearer " + token);
    return new RequestCtor(req, { headers: h });
  }

  async function vfetch(input, init) {
    const req = new RequestCtor(input, init);
    const token = await getAccessToken();
    if (!token) return doFetch(req);
    const res = await doFetch(withBearer(req.clone(), token));
    if (res.status !== 401) return res;
    let fresh;
    try {
      fresh = await refresh(token);
    } catch (e) {
      if (e instanceof VetoError && (e.code === "invalid_grant" || e.code === "no_session")) return res;
      throw e;
    }
    return doFetch(withBearer(req, fresh));
  }

  async function logout() {
    const t = tokens;
    if (!t) return;
    endSession({ reason: "logout", forced: false, source: "logout", sessionId: t.session_id }, { broadcast: true });
    let last = null;
    for (let i = 0; i < REFRESH_ATTEMPTS; i++) {
      if (i > 0) await sleep(Math.min(5000, Math.max(250, last?.retryAfterMs ?? backoffDelay(i - 1, { base: 400, random }))));
      try {
        const res = await postForm("/v1/logout", { token: t.refresh_token });
        if (res.ok) return;
        const code = await errorOf(res);
        if (res.status < 500 && res.status !== 429) throw new VetoError(code, "logout refused", { status: res.status });
        const ra = parseRetryAfter(res.headers?.get?.("retry-after"), now());
        last = new VetoError("temporarily_unavailable", "the authority asks to retry later", {
          status: res.status,
          ...(ra !== null ? { retryAfterMs: ra } : {}),
        });
      } catch (e) {
        if (e instanceof VetoError && e.code !== "temporarily_unavailable") throw e;
        last = e instanceof VetoError ? e : new VetoError("temporarily_unavailable", "the authority could not be reached");
      }
    }
    throw last;
  }

  // ---- the push socket ----
  const socket = (() => {
    const WS = deps.WebSocket;
    let wanted = false;
    let ws = null;
    let timer = null;
    let attempt = 0;
    let refusedBeforeOpen = 0;
    let quickExpiries = 0;
    let generation = 0;

    function clearTimer() {
      if (timer !== null) timers.clearTimeout(timer);
      timer = null;
    }
    function schedule(ms) {
      clearTimer();
      timer = timers.setTimeout(() => {
        timer = null;
        open();
      }, ms);
    }

    async function open() {
      if (!wanted || ws) return;
      const gen = ++generation;
      let token;
      try {
        token = await getAccessToken();
      } catch {
        if (gen === generation && wanted) schedule(backoffDelay(attempt++, { ...BACKOFF.network, random }));
        return;
      }
      if (gen !== generation || !wanted || ws) return;
      if (!token) return; // not logged in: tokensChanged() opens it when tokens arrive
      let s;
      try {
        s = new WS(socketUrl(authority), ["veto.v1", "veto.bearer." + token]);
      } catch {
        schedule(backoffDelay(attempt++, { ...BACKOFF.network, random }));
        return;
      }
      ws = s;
      const conn = { opened: false, openedAt: 0, token, revoked: null, ended: false };
      s.onopen = () => {
        conn.opened = true;
        conn.openedAt = now();
        refusedBeforeOpen = 0;
      };
      s.onmessage = (ev) => {
        const m = parseSocketMessage(ev.data);
        if (!m) return;
        if (m.type === "revoked") {
          conn.revoked = revokedInfo(m);
          conn.ended = true;
          wanted = false;
          endSession({ ...conn.revoked, sessionId: tokens?.session_id ?? null }, { broadcast: true });
          try {
            s.close(1000);
          } catch {
            /* already closing */
          }
        }
        // "expired": the 4401 close that follows is what acts.
      };
      s.onerror = () => {};
      s.onclose = (ev) => {
        if (ws === s) ws = null;
        if (conn.ended) return;
        const stable = conn.opened && now() - conn.openedAt >= STABLE_SOCKET_MS;
        if (stable) attempt = 0;
        const act = closeAction(ev.code);
        if (act.action === "logout") {
          wanted = false;
          endSession({ ...(conn.revoked || { reason: "revoked", forced: true, source: "socket" }), sessionId: tokens?.session_id ?? null }, { broadcast: true });
          return;
        }
        if (!wanted) return;
        if (act.action === "refresh") {
          quickExpiries = stable ? 0 : quickExpiries + 1;
          const delay = quickExpiries > 2 ? backoffDelay(attempt++, { ...BACKOFF.network, random }) : 0;
          refresh(conn.token).then(
            () => schedule(delay),
            (e) => {
              if (e instanceof VetoError && (e.code === "invalid_grant" || e.code === "no_session")) return;
              schedule(backoffDelay(attempt++, { ...BACKOFF.network, random }));
            },
          );
          return;
        }
        const delay = backoffDelay(attempt++, { ...BACKOFF[act.backoff], random });
        if (!conn.opened && act.backoff === "network") {
          // A handshake refused before the upgrade (401 bad token, 403 origin) looks like a
          // network error in a browser. Once per streak, try a fresh access token.
          refusedBeforeOpen++;
          if (refusedBeforeOpen === 2 && tokens && tokens.access_token === conn.token) {
            refresh(conn.token).then(
              () => schedule(delay),
              (e) => {
                if (!(e instanceof VetoError && (e.code === "invalid_grant" || e.code === "no_session"))) schedule(delay);
              },
            );
            return;
          }
        }
        schedule(delay);
      };
    }

    return {
      connect() {
        if (!WS) throw new VetoError("unsupported", "no WebSocket in this environment");
        wanted = true;
        if (!ws && timer === null) open();
        return () => this.disconnect();
      },
      disconnect() {
        wanted = false;
        generation++;
        clearTimer();
        const s = ws;
        ws = null;
        if (s) {
          try {
            s.close(1000);
          } catch {
            /* closing */
          }
        }
      },
      tokensChanged() {
        if (wanted && !ws && timer === null) open();
      },
      sessionEnded() {
        this.disconnect();
      },
    };
  })();

  return {
    setTokens(response) {
      const t = tokensFromResponse(response, now());
      if (t.session_id) dead.delete(t.session_id);
      tokens = null; // a login replaces whatever this tab held
      adopt(t, { broadcast: true });
    },
    fetch: vfetch,
    connect: () => socket.connect(),
    logout,
    onLogout(cb) {
      if (typeof cb !== "function") throw new TypeError("veto: onLogout needs a function");
      listeners.add(cb);
      return () => listeners.delete(cb);
    },
    getAccessToken,
    refresh: (stale) => refresh(stale),
    get session() {
      return tokens ? { sessionId: tokens.session_id, homeRegion: tokens.home_region, expiresAt: tokens.expires_at } : null;
    },
    close() {
      socket.disconnect();
      if (channel) channel.close();
      channel = null;
    },
  };
}

/**
 * The client for a browser page.
 *   authority   the authority's base URL (https://auth.example.com)
 *   onLogout    called once in each tab when the session ends: info {reason, forced, source, ...}
 *   fetch       the fetch implementation for the API and the authority (default: window.fetch)
 *   storageKey  when set, tokens are also kept in localStorage under this key (they survive a
 *               reload); by default they live in memory and are shared with the other tabs
 */
export function createVeto(options = {}) {
  const g = globalThis;
  let storage = null;
  if (options.storageKey) {
    try {
      storage = g.localStorage || null;
    } catch {
      storage = null;
    }
  }
  return createClient(options, {
    fetch: g.fetch ? g.fetch.bind(g) : undefined,
    Request: g.Request,
    Headers: g.Headers,
    WebSocket: g.WebSocket,
    BroadcastChannel: g.BroadcastChannel,
    locks: g.navigator && g.navigator.locks ? g.navigator.locks : null,
    storage,
  });
}
