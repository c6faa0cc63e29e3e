#!/usr/bin/env bash
# The in-proxy benchmark (issue 14): one Envoy 1.40 per mode, each with one worker
# (--concurrency 1) and Envoy's own direct_response instead of an upstream, wrk with one bearer
# token (a repeat ES256 token), the modes alternating in rounds so drift in the machine's load
# hits all of them:
#
#   envoy_only    no filter: the floor
#   jwt_cached    Envoy's jwt_authn with jwt_cache_config (revokes nothing): the reference;
#                 like the module it hands on x-user-id and the claims as dynamic metadata
#                 (payload_in_metadata "veto", the module's authz.metadata_namespace)
#   jwt_uncached  the same, verifying the signature on every request
#   ext_authz     deploy/envoy/envoy-sidecar.yaml.tmpl -> veto sidecar A over gRPC
#   inproxy_1M    deploy/envoy/inproxy/envoy-inproxy.yaml.tmpl: the module, with sidecar A's
#                 revoked set (HELD_SMALL session revocations) mirrored in shared memory
#   inproxy_10M   the same with sidecar B's (HELD_LARGE)
#
# Each sidecar follows its own nats-server (JetStream); the revocations are bulk-published
# with `soak_load revocations` (what scripts/bench-envoy.sh HELD= uses) and the sidecar holds
# them all (veto_revocations_held) before the load. Per round and mode: req/s, p50/p99 and
# Envoy's CPU per request (utime+stime from /proc/<envoy>/stat over the run ÷ requests: the
# steady figure on a noisy machine). At the end: medians, ratios against jwt_cached
# (capacity in CPU = jwt_cached's CPU/request ÷ the mode's; target ≥ 0.9 for the in-proxy
# modes, in CPU per request and in req/s), the shared-memory file's bytes per entry (target
# ≤ 32 B at 10M), and the revocation check: LAG_TRIES times per in-proxy mode, while wrk
# loads its Envoy, `veto revoke --session` of a session whose token Envoy just allowed, the
# sidecar polled until it refuses the token, then the very next request through Envoy must
# be 401 revoked.
#
#   scripts/bench-inproxy.sh     build release, fill, 3 rounds x 10 s per mode
# Environment knobs (defaults in brackets):
#   ROUNDS [3] DURATION [10] (seconds per wrk run) WARMUP [2] CONNECTIONS [16] (wrk -t1)
#   HELD_SMALL [1000000] HELD_LARGE [10000000] (session revocations held by sidecars A, B)
#   IN_FLIGHT [1000] (publish acks outstanding while filling) LAG_TRIES [10]
#   FILL_TIMEOUT [HELD_LARGE / 1000 s, at least 600] (the fill gives up after it)
#   NO_BUILD [0] (1 = use the existing release binaries) KEEP_TMP [0]
# Needs wrk, curl, python3 (the venv's, with PyYAML: scripts/install-deps.sh), Envoy and
# nats-server (scripts/env.sh). Everything listens on 127.0.0.1 on free ports and is stopped
# when the script exits; the shared-memory files are on /dev/shm and removed too.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
# env.sh also looks for promtool, which this script does not need: judge what it found here.
# shellcheck source=scripts/env.sh
source scripts/env.sh 2>/dev/null || true
# shellcheck source=scripts/lib.sh
source scripts/lib.sh # free_ports, wait_port, wait_http, stop_pids, cpu_ticks, wrk_report_lua, AWK_MEDIAN

ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-10}"
WARMUP="${WARMUP:-2}"
CONNECTIONS="${CONNECTIONS:-16}"
HELD_SMALL="${HELD_SMALL:-1000000}"
HELD_LARGE="${HELD_LARGE:-10000000}"
IN_FLIGHT="${IN_FLIGHT:-1000}"
FILL_TIMEOUT="${FILL_TIMEOUT:-$(( (HELD_LARGE / 1000) > 600 ? HELD_LARGE / 1000 : 600 ))}"
LAG_TRIES="${LAG_TRIES:-10}"
NO_BUILD="${NO_BUILD:-0}"
TARGET="${CARGO_TARGET_DIR:-$REPO/target}/release"
ISS="https://bench.veto.local"
AUD="bench"
T0=$SECONDS

die() {
    echo "bench-inproxy: $*" >&2
    exit 1
}
need_tools bench-inproxy 1 wrk curl envsubst
PY="${VETO_VENV:+$VETO_VENV/bin/python}"
PY="${PY:-python3}"
"$PY" -c 'import yaml' 2>/dev/null || die "$PY has no PyYAML (scripts/install-deps.sh makes the venv)"

TMP="$(mktemp -d "${TMPDIR:-/tmp}/veto-bench-inproxy.XXXXXX")"
SHM="$(mktemp -d /dev/shm/veto-bench-inproxy.XXXXXX)"
PIDS=()
cleanup() {
    stop_pids "${PIDS[@]}"
    rm -rf "$SHM"
    if [[ "${KEEP_TMP:-0}" == 1 ]]; then
        echo "bench-inproxy: logs kept in $TMP" >&2
    else
        rm -rf "$TMP"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- build -------------------------------------------------------------------------------
if [[ "$NO_BUILD" != 1 ]]; then
    echo "==> cargo build --release (veto, example soak_load, the module)"
    cargo build --release --quiet -p veto --bin veto --example soak_load -p veto-envoy-module --lib
fi
VETO="$TARGET/veto"
LOADGEN="$TARGET/examples/soak_load"
for b in "$VETO" "$LOADGEN" "$TARGET/libvetoinproxy.so"; do
    [[ -e "$b" ]] || die "$b is missing (run without NO_BUILD=1)"
done

# --- ports, keys, token --------------------------------------------------------------------
MODES=(envoy_only jwt_cached jwt_uncached ext_authz inproxy_1M inproxy_10M)
read -r P_NATS_A P_NATS_B P_GRPC_A P_HTTP_A P_GRPC_B P_HTTP_B P_UNUSED < <(free_ports 7)
read -ra P_ENVOY < <(free_ports $((2 * ${#MODES[@]})))
"$VETO" keys generate --alg ES256 --kid bench --out "$TMP/bench.ES256.der" >/dev/null
"$VETO" keys jwks "$TMP/bench.ES256.der" >"$TMP/jwks.json"
mint() { # sid -> token
    "$VETO" keys mint --key "$TMP/bench.ES256.der" --iss "$ISS" --aud "$AUD" --sub "user-$1" --sid "$1" --ttl 1h
}
TOKEN="$(mint session-1)"

# --- two sidecars, each on its own nats-server, each mirroring into /dev/shm --------------
declare -A NATS_PORT=([a]=$P_NATS_A [b]=$P_NATS_B) GRPC=([a]=$P_GRPC_A [b]=$P_GRPC_B)
declare -A HTTP=([a]=$P_HTTP_A [b]=$P_HTTP_B) HELD=([a]=$HELD_SMALL [b]=$HELD_LARGE)
for s in a b; do
    "$VETO_NATS_SERVER_BIN" -a 127.0.0.1 -p "${NATS_PORT[$s]}" -js -sd "$TMP/js-$s" >"$TMP/nats-$s.log" 2>&1 &
    PIDS+=($!)
    wait_port "${NATS_PORT[$s]}" 10 || { cat "$TMP/nats-$s.log" >&2; die "nats-server $s did not start"; }
    cat >"$TMP/veto-$s.toml" <<EOF
[grpc]
listen = "127.0.0.1:${GRPC[$s]}"
[http]
listen = "127.0.0.1:${HTTP[$s]}"
[log]
level = "warn"
[[issuers]]
issuer = "$ISS"
audiences = ["$AUD"]
algorithms = ["ES256"]
jwks_file = "$TMP/jwks.json"
# the bench token lives through a long fill and the rounds
max_token_lifetime = "2h"
[nats]
url = "nats://127.0.0.1:${NATS_PORT[$s]}"
region = "bench"
[revocation]
retention = "3h"
max_entries = $((HELD[$s] + 100000))
[inproxy]
shm_path = "$SHM/veto-$s"
EOF
    "$VETO" check-config --config "$TMP/veto-$s.toml" >/dev/null
    env -u RUST_LOG "$VETO" sidecar --config "$TMP/veto-$s.toml" >"$TMP/veto-$s.log" 2>&1 &
    PIDS+=($!)
    wait_http "http://127.0.0.1:${HTTP[$s]}/readyz" '"ready":true' 30 \
        || { cat "$TMP/veto-$s.log" >&2; die "sidecar $s not ready"; }
done
held() { # sidecar -> live revocations it holds
    curl -fsS "http://127.0.0.1:${HTTP[$1]}/metrics" | awk '/^veto_revocations_held/ { n += $2 } END { print n + 0 }'
}

echo "==> filling: $HELD_SMALL session revocations into sidecar a, $HELD_LARGE into b (both at once)"
fill_start=$SECONDS
declare -A FILL_PID=() FILLED_AT=()
for s in a b; do
    "$LOADGEN" revocations --nats "nats://127.0.0.1:${NATS_PORT[$s]}" --region bench \
        --count "${HELD[$s]}" --in-flight "$IN_FLIGHT" >"$TMP/fill-$s.log" 2>&1 &
    FILL_PID[$s]=$!
    PIDS+=($!)
done
while :; do
    for s in a b; do
        if [[ -z "${FILLED_AT[$s]:-}" ]] && (($(held "$s") >= HELD[$s])); then
            FILLED_AT[$s]=$((SECONDS - fill_start))
            echo "    sidecar $s holds ${HELD[$s]} after ${FILLED_AT[$s]} s" \
                "($(awk -v n="${HELD[$s]}" -v t="${FILLED_AT[$s]}" 'BEGIN { printf "%.0f", n / (t > 0 ? t : 1) }')/s published and applied)"
        fi
    done
    [[ -n "${FILLED_AT[a]:-}" && -n "${FILLED_AT[b]:-}" ]] && break
    # bounded: 1k/s at the least (this box fills at ~18k/s), and never under 10 minutes
    ((SECONDS - fill_start < FILL_TIMEOUT)) \
        || die "the sidecars hold $(held a) and $(held b) after ${FILL_TIMEOUT} s (FILL_TIMEOUT)"
    for s in a b; do
        if [[ -z "${FILLED_AT[$s]:-}" ]] && ! kill -0 "${FILL_PID[$s]}" 2>/dev/null \
            && ! wait "${FILL_PID[$s]}"; then
            cat "$TMP/fill-$s.log" >&2
            die "publishing into sidecar $s failed (it holds $(held "$s"))"
        fi
    done
    sleep 1
done
for s in a b; do
    wait "${FILL_PID[$s]}" || die "soak_load revocations ($s) failed: $(cat "$TMP/fill-$s.log")"
    sed 's/^/    publisher: /' "$TMP/fill-$s.log"
done
# the heartbeat publishes what was applied; give the mirror its next beat
sleep 0.5

# --- Envoys --------------------------------------------------------------------------------
# Rendered from the shipped templates, the route replaced by direct_response and, for the
# jwt_authn and envoy_only modes, the in-proxy template's filter list replaced.
declare -A LISTEN=() ADMIN=() ENVOY_PID=() SIDECAR_OF=([ext_authz]=a [inproxy_1M]=a [inproxy_10M]=b)
i=0
for m in "${MODES[@]}"; do
    LISTEN[$m]=${P_ENVOY[$i]}
    ADMIN[$m]=${P_ENVOY[$((i + 1))]}
    i=$((i + 2))
done
render() { # mode -> Envoy config on stdout
    local m="$1" tmpl=deploy/envoy/inproxy/envoy-inproxy.yaml.tmpl s="${SIDECAR_OF[$1]:-a}"
    [[ "$m" != ext_authz ]] || tmpl=deploy/envoy/envoy-sidecar.yaml.tmpl
    # shellcheck disable=SC2016 # envsubst wants the literal ${NAME}s it may replace
    LISTEN_PORT="${LISTEN[$m]}" ADMIN_PORT="${ADMIN[$m]}" AUTHZ_PORT="${GRPC[$s]}" \
        UPSTREAM_PORT="$P_UNUSED" VETO_CONFIG="$TMP/veto-$s.toml" \
        envsubst '${LISTEN_PORT} ${ADMIN_PORT} ${AUTHZ_PORT} ${UPSTREAM_PORT} ${VETO_CONFIG}' <"$tmpl" \
        | "$PY" -c '
import sys, yaml
mode, iss, aud, jwks = sys.argv[1:]
cfg = yaml.safe_load(sys.stdin)
hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
for vh in hcm["route_config"]["virtual_hosts"]:
    for r in vh["routes"]:
        r.pop("route")
        r["direct_response"] = {"status": 200, "body": {"inline_string": "ok"}}
router = hcm["http_filters"][-1]
assert router["name"] == "envoy.filters.http.router", router
# what the module hands on: the header kept, x-user-id, the verified claims as dynamic
# metadata under "veto" (authz.metadata_namespace)
provider = {"issuer": iss, "audiences": [aud], "local_jwks": {"filename": jwks}, "forward": True,
            "claim_to_headers": [{"header_name": "x-user-id", "claim_name": "sub"}],
            "payload_in_metadata": "veto"}
if mode == "jwt_cached":
    provider["jwt_cache_config"] = {"jwt_cache_size": 1000}
if mode.startswith("jwt_"):
    hcm["http_filters"] = [{"name": "envoy.filters.http.jwt_authn", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
        "providers": {"bench": provider},
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "bench"}}]}}, router]
elif mode == "envoy_only":
    hcm["http_filters"] = [router]
yaml.safe_dump(cfg, sys.stdout, sort_keys=False)
' "$m" "$ISS" "$AUD" "$TMP/jwks.json"
}
for m in "${MODES[@]}"; do
    render "$m" >"$TMP/envoy-$m.yaml" || die "rendering the $m config failed"
    ENVOY_DYNAMIC_MODULES_SEARCH_PATH="$TARGET" "$VETO_ENVOY_BIN" -c "$TMP/envoy-$m.yaml" \
        --use-dynamic-base-id --concurrency 1 -l warning --log-path "$TMP/envoy-$m.log" &
    ENVOY_PID[$m]=$!
    PIDS+=($!)
done
code() { curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$@"; }
for m in "${MODES[@]}"; do
    wait_http "http://127.0.0.1:${ADMIN[$m]}/ready" LIVE 30 \
        || { cat "$TMP/envoy-$m.log" >&2; die "Envoy for $m did not become ready"; }
    [[ "$(code -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:${LISTEN[$m]}/")" == 200 ]] \
        || die "$m: the token was not allowed: $(curl -s -i --max-time 2 -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:${LISTEN[$m]}/")"
    [[ "$m" == envoy_only || "$(code "http://127.0.0.1:${LISTEN[$m]}/")" == 401 ]] \
        || die "$m: no token was not refused"
done
echo "==> sanity ok: every mode allows the token; all but envoy_only refuse no token"

# --- the revocation check: the next request after the sidecar applied it -------------------
wrk_report_lua "$TMP/report.lua"
echo "==> revocation on the next request: $LAG_TRIES sessions per in-proxy mode, under load"
declare -A ENFORCED=()
for m in inproxy_1M inproxy_10M; do
    s="${SIDECAR_OF[$m]}" url="http://127.0.0.1:${LISTEN[$m]}/" ok=0
    timeout $((LAG_TRIES * 3 + 20)) wrk -t1 -c4 -d$((LAG_TRIES * 3 + 10))s \
        -H "Authorization: Bearer $TOKEN" "$url" >/dev/null 2>&1 &
    load=$!
    for n in $(seq "$LAG_TRIES"); do
        t="$(mint "lag-$m-$n")"
        [[ "$(code -H "Authorization: Bearer $t" "$url")" == 200 ]] || die "$m: lag token $n refused before its revocation"
        "$VETO" revoke --session "lag-$m-$n" --nats "nats://127.0.0.1:${NATS_PORT[$s]}" --region bench \
            --ttl 1h >/dev/null
        applied=0
        for _ in $(seq 500); do
            if [[ "$(code -H "Authorization: Bearer $t" "http://127.0.0.1:${HTTP[$s]}/check")" == 401 ]]; then
                applied=1
                break
            fi
            sleep 0.01
        done
        ((applied)) || die "$m: sidecar $s did not apply the revocation of lag-$m-$n within 5 s"
        if curl -s --max-time 2 -H "Authorization: Bearer $t" "$url" | grep -q '"reason":"revoked"'; then
            ok=$((ok + 1))
        fi
    done
    kill "$load" 2>/dev/null || true
    wait "$load" 2>/dev/null || true
    ENFORCED[$m]="$ok/$LAG_TRIES"
    echo "    $m: $ok of $LAG_TRIES refused (401 revoked) on the first request after sidecar $s applied them"
done

# --- load ----------------------------------------------------------------------------------
TICK_US=$((1000000 / $(getconf CLK_TCK)))
run_wrk() { # mode seconds -> "rps p50_us p99_us envoy_cpu_us_per_req"
    local m="$1" secs="$2" envoy="${ENVOY_PID[$1]}" before after out
    before="$(cpu_ticks "$envoy")"
    out="$(timeout $((secs + 15)) wrk -t1 -c"$CONNECTIONS" -d"${secs}s" \
        -H "Authorization: Bearer $TOKEN" -s "$TMP/report.lua" "http://127.0.0.1:${LISTEN[$m]}/")" \
        || die "wrk failed against $m"
    after="$(cpu_ticks "$envoy")"
    echo "$out" >>"$TMP/wrk-$m.log"
    local requests duration_us p50 p99 non2xx errors
    read -r _ requests duration_us p50 p99 non2xx errors <<<"$(grep '^RESULT ' <<<"$out")"
    ((non2xx == 0 && errors == 0)) || die "$m: $non2xx non-2xx responses, $errors socket errors"
    awk -v r="$requests" -v d="$duration_us" -v p50="$p50" -v p99="$p99" \
        -v ecpu="$(((after - before) * TICK_US))" \
        'BEGIN { printf "%.0f %d %d %.2f\n", r / d * 1e6, p50, p99, ecpu / r }'
}

echo "==> warm-up ${WARMUP}s per mode"
for m in "${MODES[@]}"; do
    run_wrk "$m" "$WARMUP" >/dev/null
done
echo "==> $ROUNDS rounds x ${DURATION}s per mode, wrk -t1 -c$CONNECTIONS, one ES256 token, Envoy" \
    "--concurrency 1; $(nproc) CPUs, load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '    %-6s %-13s %10s %9s %9s %17s\n' round mode req/s p50_us p99_us envoy_cpu_us/req
: >"$TMP/results"
n=${#MODES[@]}
for r in $(seq "$ROUNDS"); do
    for i in $(seq 0 $((n - 1))); do
        # rotated each round, and backwards every other round: a mode is not always run
        # right after the same one (ext_authz's busy sidecar, say)
        if ((r % 2)); then
            m="${MODES[$(((i + r - 1) % n))]}"
        else
            m="${MODES[$(((n - 1 - i + r - 1) % n))]}"
        fi
        read -r rps p50 p99 ecpu <<<"$(run_wrk "$m" "$DURATION")"
        printf '    %-6s %-13s %10s %9s %9s %17s\n' "$r" "$m" "$rps" "$p50" "$p99" "$ecpu"
        echo "$r $m $rps $p50 $p99 $ecpu" >>"$TMP/results"
    done
done
echo "    load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

# --- summary -------------------------------------------------------------------------------
declare -A BYTES=() ENTRIES=()
for s in a b; do
    BYTES[$s]=$(stat -c %s "$SHM/veto-$s")
    ENTRIES[$s]=$(held "$s")
done
echo "==> shared-memory table: sidecar a ${ENTRIES[a]} entries in ${BYTES[a]} B" \
    "($(awk -v b="${BYTES[a]}" -v n="${ENTRIES[a]}" 'BEGIN { printf "%.1f", b / n }') B/entry);" \
    "sidecar b ${ENTRIES[b]} entries in ${BYTES[b]} B" \
    "($(awk -v b="${BYTES[b]}" -v n="${ENTRIES[b]}" 'BEGIN { printf "%.1f", b / n }') B/entry; target <= 32 at 10M)"
echo "==> summary: medians over $ROUNDS rounds; ratios against jwt_cached (per-round: median of the ratios within each round)"
awk -v modes="${MODES[*]}" -v e1="${ENFORCED[inproxy_1M]}" -v e10="${ENFORCED[inproxy_10M]}" "$AWK_MEDIAN"'
function med(m, col,   i, a) { for (i = 1; i <= cnt[m]; i++) a[i] = v[m, i, col]; return median(a, cnt[m]) }
# capacity against jwt_cached: req/s ratio (col 3), CPU per request inverted (col 6)
function per_round(m, col,   r, k, a) {
    for (r = 1; r <= rounds; r++) a[++k] = (col == 6) ? v["jwt_cached", r, col] / v[m, r, col] : v[m, r, col] / v["jwt_cached", r, col]
    return median(a, k)
}
{ cnt[$2]++; if ($1 > rounds) rounds = $1; for (c = 3; c <= 6; c++) v[$2, $1, c] = $c }
END {
    printf "    %-13s %10s %9s %9s %17s %12s %12s\n", "mode", "req/s", "p50_us", "p99_us", "envoy_cpu_us/req", "req/s_ratio", "cpu_capacity"
    n = split(modes, s, " ")
    J = med("jwt_cached", 3); JC = med("jwt_cached", 6)
    for (i = 1; i <= n; i++) {
        m = s[i]; R = med(m, 3); C = med(m, 6)
        printf "    %-13s %10.0f %9.0f %9.0f %17.2f %12.3f %12.3f\n", m, R, med(m, 4), med(m, 5), C, R / J, JC / C
    }
    for (i = 1; i <= n; i++) {
        m = s[i]
        if (m !~ /^inproxy/) continue
        R = med(m, 3) / J; C = JC / med(m, 6)
        printf "    %s vs jwt_cached: req/s %.3f (per-round %.3f), CPU capacity %.3f (per-round %.3f); target >= 0.90: %s\n",
            m, R, per_round(m, 3), C, per_round(m, 6), (R >= 0.9 && C >= 0.9) ? "met" : "MISSED"
    }
    printf "    revocation refused on the next request after the sidecar applied it: inproxy_1M %s, inproxy_10M %s\n", e1, e10
}' "$TMP/results"
echo "==> wall time $((SECONDS - T0)) s"
