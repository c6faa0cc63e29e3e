// Real processes for the browser tests: nats-server (JetStream), `veto authority`, `veto sidecar`
// (forward-auth /check against the authority's JWKS), and a node HTTP server for the test page,
// the module, a login handler and an API that asks the sidecar.
import { spawn, execFileSync } from "node:child_process";
import { createServer } from "node:http";
import { createServer as netServer, connect as netConnect } from "node:net";
import { mkdtempSync, writeFileSync, readFileSync, mkdirSync, existsSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { randomBytes } from "node:crypto";

const here = dirname(fileURLToPath(import.meta.url));
export const REPO = resolve(here, "../..");
export const ISSUER = "https://auth.veto.test";
export const ADMIN_TOKEN = "admin-secret-for-web-tests-0123456789abcdef";

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `cond` every 25 ms until it returns something truthy (returned), at most `ms`. */
export async function until(cond, ms = 10000, what = "condition") {
  const end = Date.now() + ms;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(25);
  }
}

export function vetoBin() {
  const p = process.env.VETO_BIN || join(process.env.CARGO_TARGET_DIR || join(REPO, "target"), "debug/veto");
  return existsSync(p) ? p : null;
}
export function natsBin() {
  if (process.env.VETO_NATS_SERVER_BIN && existsSync(process.env.VETO_NATS_SERVER_BIN)) return process.env.VETO_NATS_SERVER_BIN;
  for (const d of (process.env.PATH || "").split(":").concat(["/usr/sbin", "/usr/local/sbin", "/usr/bin"]))
    if (d && existsSync(join(d, "nats-server"))) return join(d, "nats-server");
  return null;
}
export function chromiumBin() {
  if (process.env.CHROMIUM_BIN && existsSync(process.env.CHROMIUM_BIN)) return process.env.CHROMIUM_BIN;
  // Debian's /usr/bin/chromium is a shell wrapper; the real binary is beside its libraries.
  for (const p of ["/usr/lib/chromium/chromium", "/usr/bin/chromium", "/usr/bin/chromium-browser"]) if (existsSync(p)) return p;
  return null;
}

export function freePort() {
  return new Promise((res, rej) => {
    const s = netServer();
    s.once("error", rej);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

export async function waitPort(port, ms = 15000) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    const ok = await new Promise((r) => {
      const c = netConnect(port, "127.0.0.1");
      c.once("connect", () => (c.destroy(), r(true)));
      c.once("error", () => r(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`port ${port} did not open`);
}

async function waitOk(url, ms = 30000, what = url) {
  const end = Date.now() + ms;
  let last = "";
  while (Date.now() < end) {
    try {
      const r = await fetch(url);
      if (r.ok) return;
      last = `${r.status} ${await r.text()}`;
    } catch (e) {
      last = String(e);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${what} not ready: ${last}`);
}

class Proc {
  constructor(name, bin, args, logFile, env = undefined) {
    this.name = name;
    this.logFile = logFile;
    writeFileSync(logFile, "");
    this.child = spawn(bin, args, { stdio: ["ignore", "ignore", "pipe"], env: env ? { ...process.env, ...env } : process.env });
    this.child.stderr.on("data", (d) => {
      try {
        writeFileSync(logFile, d, { flag: "a" });
      } catch {
        /* dir gone */
      }
    });
  }
  log() {
    try {
      return readFileSync(this.logFile, "utf8");
    } catch {
      return "";
    }
  }
  async stop() {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const gone = new Promise((r) => this.child.once("exit", r));
    this.child.kill("SIGTERM");
    const t = setTimeout(() => this.child.kill("SIGKILL"), 3000);
    await gone;
    clearTimeout(t);
  }
}

/** The shared secrets: signing key (veto keys generate), refresh MAC key, admin token. */
export function makeKit(dir, veto) {
  mkdirSync(join(dir, "keys"), { recursive: true });
  execFileSync(veto, ["keys", "generate", "--alg", "ES256", "--kid", "k1", "--out", join(dir, "keys")], { stdio: "ignore" });
  writeFileSync(join(dir, "refresh.keys"), `r1=${randomBytes(32).toString("base64url")}\n`);
  writeFileSync(join(dir, "admin.token"), ADMIN_TOKEN + "\n");
  return dir;
}

export async function startNats(dir, bin) {
  const port = await freePort();
  const conf = join(dir, "nats.conf");
  writeFileSync(conf, `listen: 127.0.0.1:${port}\nserver_name: web_${port}\njetstream { store_dir: "${join(dir, "js")}" }\n`);
  const p = new Proc("nats", bin, ["-c", conf], join(dir, "nats.log"));
  await waitPort(port);
  p.url = `nats://127.0.0.1:${port}`;
  return p;
}

export async function startAuthority(dir, veto, kit, natsUrl, { corsOrigins, extra = "", region = "us", regions = [region], natsExtra = "" }) {
  const api = await freePort();
  const http = await freePort();
  mkdirSync(dir, { recursive: true });
  const conf = join(dir, "authority.toml");
  writeFileSync(
    conf,
    `[log]\nlevel = "info"\n[shutdown]\ndrain = "100ms"\ngrace = "2s"\n[http]\nlisten = "127.0.0.1:${http}"\n` +
      `[nats]\nurl = "${natsUrl}"\nregion = "${region}"\nregions = ${JSON.stringify(regions)}\n${natsExtra}` +
      `[authority]\nlisten = "127.0.0.1:${api}"\nissuer = "${ISSUER}"\naudiences = ["api"]\n` +
      `keys_dir = "${join(kit, "keys")}"\nadmin_token_file = "${join(kit, "admin.token")}"\n` +
      `refresh_key_file = "${join(kit, "refresh.keys")}"\nheartbeat_interval = "250ms"\n` +
      `cors_origins = [${corsOrigins.map((o) => JSON.stringify(o)).join(", ")}]\n${extra}\n`,
  );
  const p = new Proc(`authority-${region}`, veto, ["authority", "--config", conf], join(dir, "authority.log"));
  p.region = region;
  p.base = `http://127.0.0.1:${api}`;
  p.admin = `http://127.0.0.1:${http}`;
  try {
    await waitPort(api);
    await waitOk(p.admin + "/readyz", 30000, "authority");
  } catch (e) {
    throw new Error(`${e.message}\n${p.log()}`);
  }
  return p;
}

export async function startSidecar(dir, veto, jwksUrl, natsUrl, { region = "us", regions = [region], natsExtra = "" } = {}) {
  const grpc = await freePort();
  const http = await freePort();
  mkdirSync(dir, { recursive: true });
  const conf = join(dir, "sidecar.toml");
  writeFileSync(
    conf,
    `[grpc]\nlisten = "127.0.0.1:${grpc}"\n[http]\nlisten = "127.0.0.1:${http}"\n[log]\nlevel = "info"\n` +
      `[[issuers]]\nissuer = "${ISSUER}"\naudiences = ["api"]\nalgorithms = ["ES256", "EdDSA", "RS256"]\n` +
      `jwks_url = "${jwksUrl}"\nleeway = "5s"\n` +
      `[nats]\nurl = "${natsUrl}"\nregion = "${region}"\nregions = ${JSON.stringify(regions)}\n${natsExtra}`,
  );
  const p = new Proc(`sidecar-${region}`, veto, ["sidecar", "--config", conf], join(dir, "sidecar.log"));
  p.base = `http://127.0.0.1:${http}`;
  p.grpc = grpc;
  try {
    await waitPort(http);
    await waitOk(p.base + "/readyz", 30000, "sidecar");
  } catch (e) {
    throw new Error(`${e.message}\n${p.log()}`);
  }
  return p;
}

const PAGE = `<!doctype html>
<meta charset="utf-8">
<title>veto web client test</title>
<script type="module">
  import { createVeto } from "/veto.js";
  const authority = new URLSearchParams(location.search).get("authority");
  window.logouts = [];
  window.veto = createVeto({ authority, onLogout: (info) => window.logouts.push({ ...info, at: Date.now() }) });
  window.login = async (sub) => {
    const r = await fetch("/login", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ sub, authority }) });
    if (!r.ok) throw new Error("login " + r.status);
    const t = await r.json();
    window.veto.setTokens(t);
    return t.session_id;
  };
  window.api = async () => {
    const r = await window.veto.fetch("/api");
    return r.status;
  };
  window.vetoReady = true;
</script>`;

/** The app: test page, the module, POST /login, GET /api (→ sidecar /check), test controls. */
export async function startApp({ sidecar, apiVia, admins, port, adminToken = ADMIN_TOKEN }) {
  port = port || (await freePort());
  const app = { port, origin: `http://127.0.0.1:${port}`, api: 0, api401: 0, rejected: new Set(), seen: new Set(), logins: [] };
  const moduleText = () => readFileSync(join(REPO, "clients/web/veto.js"));
  const body = (req) =>
    new Promise((res) => {
      const c = [];
      req.on("data", (d) => c.push(d));
      req.on("end", () => res(Buffer.concat(c).toString()));
    });
  const server = createServer(async (req, res) => {
    const url = new URL(req.url, app.origin);
    try {
      if (req.method === "GET" && url.pathname === "/") {
        res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
        return res.end(PAGE);
      }
      if (req.method === "GET" && url.pathname === "/veto.js") {
        res.writeHead(200, { "content-type": "text/javascript; charset=utf-8", "cache-control": "no-store" });
        return res.end(moduleText());
      }
      if (req.method === "POST" && url.pathname === "/login") {
        const { sub, authority } = JSON.parse(await body(req));
        if (!admins.includes(authority)) {
          res.writeHead(400);
          return res.end();
        }
        const r = await fetch(authority + "/v1/sessions", {
          method: "POST",
          headers: { authorization: "Bearer " + adminToken, "content-type": "application/json" },
          body: JSON.stringify({ sub }),
        });
        const text = await r.text();
        if (r.ok) app.logins.push(JSON.parse(text));
        res.writeHead(r.status, { "content-type": "application/json", "cache-control": "no-store" });
        return res.end(text);
      }
      if (url.pathname === "/api") {
        app.api++;
        const auth = req.headers.authorization || "";
        const token = auth.startsWith("Bearer ") ? auth.slice(7) : "";
        if (token) app.seen.add(token);
        let status;
        if (app.rejected.has(token)) status = 401;
        else if (apiVia) {
          // the API behind a proxy (Envoy + ext_authz): forward the call, keep the status
          const r = await fetch(apiVia + "/api", { headers: auth ? { authorization: auth } : {} });
          await r.arrayBuffer();
          status = r.status;
          app.viaStatuses = (app.viaStatuses || []).concat(status);
        } else {
          const r = await fetch(sidecar + "/check", { headers: auth ? { authorization: auth } : {} });
          status = r.status;
        }
        if (status === 401) app.api401++;
        res.writeHead(status, { "content-type": "application/json", "cache-control": "no-store", ...(status === 401 ? { "www-authenticate": 'Bearer error="invalid_token"' } : {}) });
        return res.end(JSON.stringify({ ok: status === 200 }));
      }
      res.writeHead(404);
      res.end();
    } catch (e) {
      res.writeHead(500);
      res.end(String(e));
    }
  });
  await new Promise((r) => server.listen(port, "127.0.0.1", r));
  /** From now on the API answers 401 to every access token it has seen (as if expired). */
  app.rejectSeen = () => {
    for (const t of app.seen) app.rejected.add(t);
  };
  app.stop = () => new Promise((r) => (server.closeAllConnections?.(), server.close(() => r())));
  return app;
}

/** Sum of veto_authority_refreshes_total by result. */
export async function refreshCounts(authority) {
  const text = await (await fetch(authority.admin + "/metrics")).text();
  const out = { total: 0 };
  for (const line of text.split("\n")) {
    const m = /^veto_authority_refreshes_total\{result="([^"]+)"\} (\S+)/.exec(line);
    if (m) {
      out[m[1]] = Number(m[2]);
      out.total += Number(m[2]);
    }
  }
  return out;
}

export function tempDir() {
  return mkdtempSync(join(tmpdir(), "veto-web-"));
}
export function removeDir(d) {
  try {
    rmSync(d, { recursive: true, force: true });
  } catch {
    /* best effort */
  }
}

// ---------------------------------------------------------------------------------------------
// Multi-region: `veto nats topology` (per region a hub with gateways + a JetStream leaf in its
// own domain), Envoy, an upstream
// ---------------------------------------------------------------------------------------------

export function envoyBin() {
  const cands = [process.env.VETO_ENVOY_BIN];
  for (const d of (process.env.PATH || "").split(":")) if (d) cands.push(join(d, "envoy"));
  for (const p of cands) {
    if (!p || !existsSync(p)) continue;
    try {
      execFileSync(p, ["--version"], { stdio: "ignore", timeout: 10000 });
      return p;
    } catch {
      /* not a working Envoy */
    }
  }
  return null;
}

/** A base port P with P..P+10*n free (the topology uses P+10*i .. P+10*i+5). */
async function freeBase(n) {
  const tryBind = (port) =>
    new Promise((r) => {
      const s = netServer();
      s.once("error", () => r(false));
      s.listen(port, "127.0.0.1", () => s.close(() => r(true)));
    });
  for (let i = 0; i < 200; i++) {
    const base = 20000 + 100 * Math.floor(Math.random() * 400);
    let ok = true;
    for (let p = base; p < base + 10 * n && ok; p++) ok = await tryBind(p);
    if (ok) return base;
  }
  throw new Error("no free port range for the NATS topology");
}

/**
 * `veto nats topology --regions ... --no-auth-user operator`, every hub then every JetStream
 * server (with the random passwords of its secrets.env in their environment), each region's
 * stream provisioned (retried while gateways and leaf nodes form). Returns { procs,
 * url(region), hubUrl(region), login(user), stop() }; `login(user)` is the [nats] lines that
 * log a veto program in as that user (authorities must: only `authority` may publish
 * heartbeats).
 */
export async function startTopology(dir, veto, nats, regions) {
  const base = await freeBase(regions.length);
  const conf = join(dir, "nats");
  execFileSync(
    veto,
    ["nats", "topology", "--regions", regions.join(","), "--base-port", String(base), "--store", join(dir, "js"), "--out", conf, "--no-auth-user", "operator"],
    { stdio: "ignore" },
  );
  const readEnv = (file) => {
    const out = {};
    for (const line of readFileSync(join(conf, file), "utf8").split("\n")) {
      const m = /^(VETO_NATS_\w+)=(.*)$/.exec(line);
      if (m) out[m[1]] = m[2];
    }
    return out;
  };
  const env = readEnv("ports.env");
  const secrets = readEnv("secrets.env");
  const t = {
    procs: [],
    url: (r) => env[`VETO_NATS_${r.toUpperCase()}_URL`],
    hubUrl: (r) => env[`VETO_NATS_${r.toUpperCase()}_HUB_URL`],
    login: (user) => `user = "${user}"\npassword_file = "${join(conf, "passwords", user)}"\n`,
    stop: async () => {
      for (const p of t.procs.reverse()) await p.stop();
    },
  };
  const portOf = (u) => Number(u.split(":").pop());
  for (const role of ["hub", "js"]) {
    for (const r of regions) {
      const p = new Proc(`${r}-${role}`, nats, ["-c", join(conf, `${r}-${role}.conf`)], join(dir, `${r}-${role}.log`), secrets);
      t.procs.push(p);
      try {
        await waitPort(portOf(role === "hub" ? t.hubUrl(r) : t.url(r)));
      } catch (e) {
        throw new Error(`${r}-${role}: ${e.message}\n${p.log()}`);
      }
    }
  }
  await Promise.all(
    regions.map(async (r) => {
      const end = Date.now() + 20000;
      let last = "";
      for (;;) {
        try {
          execFileSync(veto, ["nats", "provision", "--nats", t.url(r), "--region", r, "--regions", regions.join(","), "--retention", "1h", "--timeout", "2s"], { stdio: "pipe" });
          return;
        } catch (e) {
          last = String(e.stderr || e);
        }
        if (Date.now() > end) throw new Error(`provision ${r}: ${last}`);
        await new Promise((res) => setTimeout(res, 200));
      }
    }),
  );
  return t;
}

/** A tiny upstream answering 200 {"user": <x-user-id>} (what Envoy routes to once allowed). */
export async function startUpstream() {
  const port = await freePort();
  const server = createServer((req, res) => {
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify({ user: req.headers["x-user-id"] || null }));
  });
  await new Promise((r) => server.listen(port, "127.0.0.1", r));
  return { port, stop: () => new Promise((r) => (server.closeAllConnections?.(), server.close(() => r()))) };
}

/** Envoy from deploy/envoy/envoy-sidecar.yaml.tmpl: ext_authz gRPC to `authzPort`, routes to `upstreamPort`. */
export async function startEnvoy(dir, envoy, authzPort, upstreamPort) {
  mkdirSync(dir, { recursive: true });
  const listen = await freePort();
  const admin = await freePort();
  const cfg = readFileSync(join(REPO, "deploy/envoy/envoy-sidecar.yaml.tmpl"), "utf8")
    .replaceAll("${LISTEN_PORT}", String(listen))
    .replaceAll("${ADMIN_PORT}", String(admin))
    .replaceAll("${AUTHZ_PORT}", String(authzPort))
    .replaceAll("${UPSTREAM_PORT}", String(upstreamPort));
  writeFileSync(join(dir, "envoy.yaml"), cfg);
  const p = new Proc("envoy", envoy, ["-c", join(dir, "envoy.yaml"), "--use-dynamic-base-id", "-l", "warning", "--concurrency", "1"], join(dir, "envoy.log"));
  p.base = `http://127.0.0.1:${listen}`;
  try {
    await waitPort(listen, 20000);
    await waitOk(`http://127.0.0.1:${admin}/ready`, 20000, "envoy");
  } catch (e) {
    throw new Error(`${e.message}\n${p.log()}`);
  }
  return p;
}
