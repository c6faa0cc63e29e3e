#!/usr/bin/env bash
# The project's test command (what .ci/run runs). Needs scripts/install-deps.sh to have run.
#
#   scripts/test.sh                Rust checks and tests, then the deploy/ and k8s/ checks
#   scripts/test.sh --deploy-only  only the deploy/ and k8s/ checks (no cargo; seconds)
#
# Steps, stopping at the first failure:
#   cargo fmt --check; cargo clippy --all-targets -D warnings; cargo test --all-targets
#   scripts/test-web.sh (clients/web: node tests, tsc of the Angular example, Chromium tests)
#   scripts/build-image.sh + scripts/test-image.sh (the FROM scratch image, run with podman)
#   scripts/fuzz.sh --smoke 30 --jobs 2 (every fuzz target, 30 s each)
#   promtool check rules + promtool test rules (deploy/prometheus)
#   Envoy templates rendered with envsubst and `envoy --mode validate`d (deploy/envoy; the
#   in-proxy one with the module cargo built)
#   Grafana dashboard structure, metric names and PromQL (deploy/grafana)
#   scripts/validate-k8s.sh (k8s/)
# The Rust tests find Envoy, nats-server and promtool through VETO_ENVOY_BIN,
# VETO_NATS_SERVER_BIN and PROMTOOL, exported by scripts/env.sh.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
# shellcheck source=scripts/env.sh
source scripts/env.sh

run_cargo=1
case "${1:-}" in
    "") ;;
    --deploy-only) run_cargo=0 ;;
    *) echo "usage: $0 [--deploy-only]" >&2; exit 64 ;;
esac

step() {
    local name="$1" start=$SECONDS
    shift
    echo "==> $name"
    if ! "$@"; then
        echo "==> FAILED: $name ($((SECONDS - start))s)" >&2
        exit 1
    fi
    echo "==> ok: $name ($((SECONDS - start))s)"
}

# Render each Envoy template with only its own placeholders and validate it with the real
# Envoy 1.40 (validate mode parses everything, binds nothing).
# (A subshell function: its temp dir goes with it. `set -e` does not apply inside `step`'s
# `if`, hence the explicit `|| return 1`.)
check_envoy_templates() (
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    for tmpl in deploy/envoy/*.yaml.tmpl; do
        rendered="$tmp/$(basename "$tmpl" .tmpl)"
        # shellcheck disable=SC2016 # envsubst wants the literal ${NAME}s it may replace
        LISTEN_PORT=10000 ADMIN_PORT=10001 AUTHZ_PORT=10002 AUTHZ_HTTP_PORT=10003 UPSTREAM_PORT=10004 \
            envsubst '${LISTEN_PORT} ${ADMIN_PORT} ${AUTHZ_PORT} ${AUTHZ_HTTP_PORT} ${UPSTREAM_PORT}' \
            <"$tmpl" >"$rendered" || return 1
        # shellcheck disable=SC2016
        if grep -n '\${' "$rendered"; then
            echo "$tmpl: placeholder left after rendering (above)" >&2
            return 1
        fi
        "$VETO_ENVOY_BIN" --mode validate -c "$rendered" -l error >"$tmp/out" 2>&1 \
            || { cat "$tmp/out" >&2; echo "$tmpl: envoy --mode validate failed" >&2; return 1; }
        echo "$tmpl: $(tail -n 1 "$tmp/out")"
    done
    # The in-proxy template names the dynamic module: validating it loads the module (built by
    # `cargo test --all-targets`) and runs its configuration, so it gets a veto config of its
    # own. Skipped, saying so, when the module is not built (--deploy-only on a fresh tree).
    local module_dir="$REPO/target/debug" tmpl=deploy/envoy/inproxy/envoy-inproxy.yaml.tmpl
    if [[ ! -f "$module_dir/libvetoinproxy.so" ]]; then
        echo "$tmpl: skipped (no $module_dir/libvetoinproxy.so; cargo build -p veto-envoy-module)"
        return 0
    fi
    # a public key that verifies nothing of anyone's (validation only needs a usable JWKS)
    echo '{"keys":[{"kty":"EC","crv":"P-256","kid":"validate","alg":"ES256","use":"sig","x":"A--B_JkfSWo9x2fis__jB6qTVfe47_uLxvW5iqhALGQ","y":"taU7PYXTgXc5_rBV7X8FCs1QFpOV76Y2c83vo9bK1Ng"}]}' \
        >"$tmp/jwks.json"
    cat >"$tmp/veto.toml" <<TOML || return 1
[[issuers]]
issuer = "https://issuer.example"
audiences = ["api"]
jwks_file = "$tmp/jwks.json"
[nats]
url = "nats://127.0.0.1:4222"
region = "us"
[inproxy]
shm_path = "$tmp/veto-revoked"
TOML
    # shellcheck disable=SC2016
    LISTEN_PORT=10000 ADMIN_PORT=10001 UPSTREAM_PORT=10004 VETO_CONFIG="$tmp/veto.toml" \
        envsubst '${LISTEN_PORT} ${ADMIN_PORT} ${UPSTREAM_PORT} ${VETO_CONFIG}' \
        <"$tmpl" >"$tmp/inproxy.yaml" || return 1
    ENVOY_DYNAMIC_MODULES_SEARCH_PATH="$module_dir" \
        "$VETO_ENVOY_BIN" --mode validate -c "$tmp/inproxy.yaml" -l error >"$tmp/out" 2>&1 \
        || { cat "$tmp/out" >&2; echo "$tmpl: envoy --mode validate failed" >&2; return 1; }
    echo "$tmpl: $(tail -n 1 "$tmp/out")"
)

if ((run_cargo)); then
    step "cargo fmt --check" cargo fmt --check
    step "cargo clippy" cargo clippy --all-targets -- -D warnings
    step "cargo test" cargo test --all-targets
    # the web client: node tests, the Angular type-check, real Chromium against the authority
    # (needs target/debug/veto, built by the step above)
    step "web client" scripts/test-web.sh
    # the container image: the static veto FROM scratch, run with podman against a real
    # nats-server: allow -> revoke -> deny, clean stop (docs/container.md)
    step "container image" scripts/build-image.sh
    step "container smoke test" scripts/test-image.sh
    # every cargo-fuzz target for 30 s, two at a time, on the seed corpora they write (fuzz/)
    step "fuzz smoke" scripts/fuzz.sh --smoke 30 --jobs 2
fi
step "promtool check rules" "$PROMTOOL" check rules deploy/prometheus/alerts.yaml
step "promtool test rules" "$PROMTOOL" test rules deploy/prometheus/alerts_test.yaml
step "envoy templates" check_envoy_templates
step "grafana dashboard" "$VETO_VENV/bin/python" scripts/deploy_checks.py dashboard deploy/grafana/*.json
step "k8s manifests" scripts/validate-k8s.sh
echo "==> all checks passed"
