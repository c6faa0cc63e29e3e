#!/usr/bin/env bash
# The web client's tests (clients/web, tests/web): installs what they need, runs
#   1. node's test runner on the pure logic and the client with fakes (tests/web/{logic,client}.test.mjs)
#   2. tsc --noEmit on veto.d.ts and the Angular interceptor (real @angular/*, rxjs, typescript)
#   3. the Playwright browser tests (tests/web/browser.test.mjs) when Chromium, target/debug/veto
#      and nats-server are there: real nats-server, veto authority, veto sidecar, Chromium; and
#      tests/web/regions.test.mjs (3-region NATS topology, an authority + sidecar per region,
#      Envoy in us; skips itself without Envoy).
# Idempotent; bounded (each step has a timeout); exits non-zero on any failure; says what it
# skipped and why. Env: VETO_WEB_NO_INSTALL=1 skips apt/npm installs; VETO_BIN, CHROMIUM_BIN,
# VETO_NATS_SERVER_BIN override the binaries.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
web="$repo/clients/web"
start=$(date +%s)
skipped=()
step() { printf '\n== %s\n' "$*"; }

# shellcheck source=/dev/null
source "$repo/scripts/env.sh" >/dev/null 2>&1 || true   # VETO_NATS_SERVER_BIN, VETO_ENVOY_BIN (regions.test.mjs)

apt_install() {
    [[ "${VETO_WEB_NO_INSTALL:-}" == 1 ]] && return 1
    command -v apt-get >/dev/null || return 1
    if [[ ! -f /tmp/.veto-web-apt-updated ]]; then
        timeout 300 apt-get update -qq >/dev/null 2>&1 && touch /tmp/.veto-web-apt-updated || true
    fi
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq "$@" >/dev/null
}

step "node"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "node/npm missing: apt-get install nodejs npm"
    apt_install nodejs npm || { echo "FAIL: no node and could not install it" >&2; exit 1; }
fi
node_major=$(node -p 'process.versions.node.split(".")[0]')
echo "node $(node --version), npm $(npm --version)"
if (( node_major < 18 )); then echo "FAIL: node >= 18 needed" >&2; exit 1; fi

step "npm dev dependencies (clients/web/node_modules, from package-lock.json)"
if [[ "${VETO_WEB_NO_INSTALL:-}" != 1 ]]; then
    lock_sum=$(sha256sum "$web/package-lock.json" | cut -d' ' -f1)
    if [[ -f "$web/node_modules/.veto-lock-sum" && "$(cat "$web/node_modules/.veto-lock-sum")" == "$lock_sum" ]]; then
        echo "up to date"
    else
        (cd "$web" && timeout 300 npm ci --no-audit --no-fund --loglevel=error)
        echo "$lock_sum" > "$web/node_modules/.veto-lock-sum"
    fi
fi

step "node tests (pure logic, client with fakes)"
timeout 120 node --test --test-reporter=spec "$repo/tests/web/logic.test.mjs" "$repo/tests/web/client.test.mjs"

step "TypeScript: veto.d.ts + Angular interceptor (tsc --noEmit)"
if [[ -x "$web/node_modules/.bin/tsc" ]]; then
    (cd "$web" && timeout 120 node_modules/.bin/tsc -p tsconfig.json) && echo "ok"
else
    echo "FAIL: typescript not installed in clients/web/node_modules" >&2; exit 1
fi

step "browser tests (Chromium, real authority/sidecar/nats-server)"
chromium_bin="${CHROMIUM_BIN:-}"
if [[ -z "$chromium_bin" ]]; then
    for c in /usr/lib/chromium/chromium /usr/bin/chromium; do [[ -x "$c" ]] && { chromium_bin=$c; break; }; done
fi
if [[ -z "$chromium_bin" ]]; then
    echo "chromium missing: apt-get install chromium"
    apt_install chromium || true
    [[ -x /usr/lib/chromium/chromium ]] && chromium_bin=/usr/lib/chromium/chromium
fi
veto_bin="${VETO_BIN:-$repo/target/debug/veto}"
nats_bin="${VETO_NATS_SERVER_BIN:-$(PATH="$PATH:/usr/sbin" command -v nats-server || true)}"
why=()
[[ -n "$chromium_bin" ]] || why+=("no chromium")
[[ -x "$veto_bin" ]] || why+=("no $veto_bin (cargo build)")
[[ -x "$nats_bin" ]] || why+=("no nats-server (scripts/install-deps.sh)")
if (( ${#why[@]} )); then
    echo "SKIPPED browser tests: ${why[*]}"
    skipped+=("browser tests: ${why[*]}")
else
    out=$(mktemp)
    set +e
    CHROMIUM_BIN="$chromium_bin" VETO_BIN="$veto_bin" VETO_NATS_SERVER_BIN="$nats_bin" \
        timeout 240 node --test --test-reporter=spec "$repo/tests/web/browser.test.mjs" "$repo/tests/web/regions.test.mjs" 2>&1 | tee "$out"
    rc=${PIPESTATUS[0]}
    set -e
    if grep -q "region browser tests skipped" "$out"; then skipped+=("3-region browser tests: $(grep -o 'region browser tests skipped: .*' "$out" | head -1)"); fi
    if grep -q "socket tests skipped" "$out"; then skipped+=("socket tests: $(grep -o 'socket tests skipped: .*' "$out" | head -1)"); fi
    rm -f "$out"
    (( rc == 0 )) || { echo "FAIL: browser tests (exit $rc)" >&2; exit "$rc"; }
fi

step "done in $(( $(date +%s) - start )) s"
if (( ${#skipped[@]} )); then printf 'skipped: %s\n' "${skipped[@]}"; else echo "nothing skipped"; fi
