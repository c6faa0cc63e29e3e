// Pure logic of clients/web/veto.js: expiry math, backoff schedule, close codes, parsing.
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  tokensFromResponse,
  refreshDue,
  refreshMargin,
  isExpired,
  backoffDelay,
  BACKOFF,
  closeAction,
  parseSocketMessage,
  revokedInfo,
  parseRetryAfter,
  socketUrl,
} from "../../clients/web/veto.js";

const resp = (ttl = 600) => ({
  access_token: "a",
  token_type: "Bearer",
  expires_in: ttl,
  refresh_token: "r",
  session_id: "s1",
  home_region: "us",
});

test("token response: expiry on the local clock from expires_in", () => {
  const t = tokensFromResponse(resp(600), 1_000_000);
  assert.equal(t.expires_at, 1_000_000 + 600_000);
  assert.equal(t.issued_at, 1_000_000);
  assert.equal(t.session_id, "s1");
  assert.equal(t.home_region, "us");
  for (const bad of [null, {}, { ...resp(), access_token: "" }, { ...resp(), refresh_token: 1 }, { ...resp(), expires_in: 0 }, { ...resp(), expires_in: "x" }])
    assert.throws(() => tokensFromResponse(bad, 0), TypeError);
});

test("refresh margin: a fifth of the life, between 1 s and 60 s", () => {
  assert.equal(refreshMargin(tokensFromResponse(resp(600), 0)), 60_000); // 10 min → 60 s
  assert.equal(refreshMargin(tokensFromResponse(resp(100), 0)), 20_000); // 100 s → 20 s
  assert.equal(refreshMargin(tokensFromResponse(resp(2), 0)), 1_000); // floor
  const t = tokensFromResponse(resp(600), 0);
  assert.equal(refreshDue(t, 539_999), false);
  assert.equal(refreshDue(t, 540_000), true);
  assert.equal(isExpired(t, 599_999), false);
  assert.equal(isExpired(t, 600_000), true);
  assert.equal(refreshDue(null, 0), false);
  assert.equal(isExpired(null, 0), true);
});

test("backoff: equal jitter, doubling, capped", () => {
  const lo = { random: () => 0 };
  const hi = { random: () => 0.999999 };
  const los = [0, 1, 2, 3, 4, 5, 6, 7].map((n) => backoffDelay(n, { ...BACKOFF.network, ...lo }));
  const his = [0, 1, 2, 3, 4, 5, 6, 7].map((n) => backoffDelay(n, { ...BACKOFF.network, ...hi }));
  assert.deepEqual(los, [250, 500, 1000, 2000, 4000, 8000, 15000, 15000]);
  assert.deepEqual(his, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]);
  assert.equal(backoffDelay(0, { ...BACKOFF.crowded, ...lo }), 2500);
  assert.equal(backoffDelay(10, { ...BACKOFF.crowded, ...hi }), 60000);
  assert.equal(backoffDelay(1000, { base: 1, cap: 10, ...hi }), 10); // no overflow
  for (let i = 0; i < 200; i++) {
    const d = backoffDelay(3, BACKOFF.network);
    assert.ok(d >= 2000 && d <= 4000, String(d));
  }
});

test("close codes", () => {
  assert.deepEqual(closeAction(4403), { action: "logout" });
  assert.deepEqual(closeAction(4401), { action: "refresh" });
  assert.deepEqual(closeAction(4429), { action: "reconnect", backoff: "crowded" });
  assert.deepEqual(closeAction(1012), { action: "reconnect", backoff: "restart" });
  for (const c of [1000, 1001, 1006, 1011, 1008, 4000, 4500])
    assert.deepEqual(closeAction(c), { action: "reconnect", backoff: "network" }, String(c));
});

test("socket messages", () => {
  assert.equal(parseSocketMessage("nope"), null);
  assert.equal(parseSocketMessage("[1]"), null);
  assert.equal(parseSocketMessage('{"x":1}'), null);
  assert.equal(parseSocketMessage(new ArrayBuffer(2)), null);
  assert.equal(parseSocketMessage("x".repeat(70000)), null);
  const m = parseSocketMessage('{"type":"revoked","kind":"session","reason":"admin","revoked_at":5,"origin_region":"us"}');
  assert.deepEqual(revokedInfo(m), { reason: "admin", forced: true, source: "socket", kind: "session", revokedAt: 5, originRegion: "us" });
  assert.deepEqual(revokedInfo({ type: "revoked" }), { reason: "revoked", forced: true, source: "socket" });
  assert.deepEqual(parseSocketMessage('{"type":"expired"}'), { type: "expired" });
});

test("Retry-After and the socket URL", () => {
  assert.equal(parseRetryAfter("2", 0), 2000);
  assert.equal(parseRetryAfter(null, 0), null);
  assert.equal(parseRetryAfter("soon", 0), null);
  assert.equal(parseRetryAfter(new Date(10_000).toUTCString(), 4_000), 6000);
  assert.equal(socketUrl("https://auth.example.com/"), "wss://auth.example.com/v1/ws");
  assert.equal(socketUrl("http://127.0.0.1:9280"), "ws://127.0.0.1:9280/v1/ws");
});
