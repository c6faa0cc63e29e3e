#!/usr/bin/env node
// Step 6 of the demo (scripts/demo.sh): a browser (headless Chromium, two tabs of one profile)
// logs in through the us authority, opens the forced-logout socket to the us authority
// (veto.connect()); the session is then revoked with POST /v1/revocations on the eu authority,
// and each tab's onLogout callback is timed against the event's revoked_at.
//
//   node scripts/demo-browser.mjs --us http://127.0.0.1:PORT --eu http://127.0.0.1:PORT \
//        --admin-token-file FILE --port PAGE_PORT [--tabs 2] [--deadline-ms 18000]
//
// (or env VETO_DEMO_US, VETO_DEMO_EU, VETO_DEMO_ADMIN_TOKEN_FILE, VETO_DEMO_PAGE_PORT). The page
// is served on 127.0.0.1:PAGE_PORT, so http://127.0.0.1:PAGE_PORT must be in the authorities'
// cors_origins. Exit 0: done; 3: skipped (prints "skipped: <why>"); 1: failed (prints why).
// Everything it starts (the app server, Chromium) is stopped before it exits, also on the
// deadline, SIGINT and SIGTERM.
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import * as h from "../tests/web/harness.mjs";

const arg = (name, env, def) => {
  const i = process.argv.indexOf(`--${name}`);
  if (i > 0 && process.argv[i + 1] !== undefined) return process.argv[i + 1];
  return process.env[env] ?? def;
};
const US = arg("us", "VETO_DEMO_US");
const EU = arg("eu", "VETO_DEMO_EU");
const TOKEN_FILE = arg("admin-token-file", "VETO_DEMO_ADMIN_TOKEN_FILE");
const PORT = Number(arg("port", "VETO_DEMO_PAGE_PORT", "0"));
const TABS = Math.max(1, Math.min(4, Number(arg("tabs", "VETO_DEMO_TABS", "2"))));
const DEADLINE = Number(arg("deadline-ms", "VETO_DEMO_DEADLINE_MS", "18000"));
const say = (s) => console.log(`   ${s}`);

function skip(why) {
  console.log(`skipped: ${why}`);
  process.exit(3);
}
if (!US || !EU || !TOKEN_FILE || !PORT) {
  console.error("usage: demo-browser.mjs --us URL --eu URL --admin-token-file FILE --port PAGE_PORT");
  process.exit(64);
}
let playwright = null;
for (const base of ["clients/web", "tests/web"]) {
  try {
    playwright = createRequire(join(h.REPO, base, "package.json"))("playwright-core");
    break;
  } catch {
    /* next */
  }
}
if (!playwright) skip("playwright-core not installed (scripts/test-web.sh installs it in clients/web)");
const chromium = h.chromiumBin();
if (!chromium) skip("no Chromium (apt-get install chromium, or CHROMIUM_BIN)");
const ADMIN = readFileSync(TOKEN_FILE, "utf8").trim();

const env = {};
let cleaning = null;
function cleanup() {
  cleaning ??= (async () => {
    await env.browser?.close().catch(() => {});
    await env.app?.stop().catch(() => {});
  })();
  return cleaning;
}
const bail = async (code, msg) => {
  if (msg) say(msg);
  await cleanup();
  process.exit(code);
};
const deadline = setTimeout(() => bail(1, `step 6 did not finish within ${DEADLINE} ms`), DEADLINE);
for (const sig of ["SIGINT", "SIGTERM"]) process.on(sig, () => bail(1, `interrupted (${sig})`));

const { sleep, until } = h;

async function main() {
  const t0 = Date.now();
  env.app = await h.startApp({ admins: [US], port: PORT, adminToken: ADMIN });
  env.browser = await playwright.chromium.launch({
    executablePath: chromium,
    args: ["--no-sandbox", "--disable-dev-shm-usage"],
    headless: true,
    handleSIGINT: false,
    handleSIGTERM: false,
  });
  const ctx = await env.browser.newContext();
  // record each socket's close code and message types (what the page saw)
  await ctx.addInitScript(() => {
    const W = window.WebSocket;
    window.__ws = [];
    window.WebSocket = class extends W {
      constructor(url, protocols) {
        super(url, protocols);
        const rec = { opened: false, code: null, types: [] };
        window.__ws.push(rec);
        this.addEventListener("open", () => (rec.opened = true));
        this.addEventListener("close", (e) => (rec.code = e.code));
        this.addEventListener("message", (e) => {
          try {
            rec.types.push(JSON.parse(String(e.data)).type);
          } catch {
            rec.types.push("?");
          }
        });
      }
    };
  });
  const pages = [];
  for (let i = 0; i < TABS; i++) {
    const p = await ctx.newPage();
    await p.goto(`${env.app.origin}/?authority=${encodeURIComponent(US)}`);
    await p.waitForFunction(() => window.vetoReady === true, null, { timeout: 5000 });
    pages.push(p);
  }
  const sid = await pages[0].evaluate(() => window.login("grace"));
  const login = env.app.logins.find((l) => l.session_id === sid);
  for (const p of pages) await until(() => p.evaluate(() => !!window.veto.session), 3000, "the tokens in every tab");
  for (const p of pages) p.evaluate(() => window.veto.connect());
  for (const p of pages) await until(() => p.evaluate(() => window.__ws.some((w) => w.opened)), 5000, "the socket to the us authority open");
  say(`Chromium (${TABS} tab${TABS > 1 ? "s" : ""}, page ${env.app.origin}): logged in through us (session ${sid}, home ${login?.home_region}), sockets open to the us authority (${Date.now() - t0} ms)`);

  const r = await fetch(EU + "/v1/revocations", {
    method: "POST",
    headers: { authorization: "Bearer " + ADMIN, "content-type": "application/json" },
    body: JSON.stringify({ kind: "session", id: sid, reason: "admin", urgent: true }),
  });
  const ev = await r.json().catch(() => ({}));
  if (r.status !== 202) throw new Error(`POST /v1/revocations in eu -> ${r.status} ${JSON.stringify(ev)}`);
  const revokedAt = Number(ev.revoked_at);
  say(`POST /v1/revocations in eu -> ${r.status} (origin ${ev.origin_region}, revoked_at ${revokedAt})`);

  for (const p of pages) await until(() => p.evaluate(() => window.logouts.length > 0), 5000, "the forced-logout callback");
  await sleep(100);
  for (const [i, p] of pages.entries()) {
    const { logouts, ws, session } = await p.evaluate(() => ({ logouts: window.logouts, ws: window.__ws, session: window.veto.session }));
    const l = logouts[0];
    const last = ws[ws.length - 1] || {};
    const how = last.types?.includes("revoked") ? `close ${last.code}` : `via the other tab's broadcast, close ${last.code}`;
    say(
      `tab ${i + 1}: page logged out ${l.at - revokedAt} ms after revoked_at (reason ${l.reason}, ${how}; ` +
        `forced ${l.forced}, tokens ${session ? "still there" : "gone"}, ${ws.length} socket${ws.length > 1 ? "s" : ""})`,
    );
  }
}

main().then(
  () => (clearTimeout(deadline), bail(0)),
  (e) => (clearTimeout(deadline), cleaning ? undefined : bail(1, `step 6 failed: ${e.message.split("\n")[0]}`)),
);
