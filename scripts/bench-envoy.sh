#!/usr/bin/env bash
# Load test of the sidecar behind a real Envoy, against a do-nothing ext_authz server, in the
# same run:
#
#   wrk -> Envoy -> ext_authz gRPC -> veto sidecar (JWKS file, live NATS JetStream feed)
#   wrk -> Envoy -> ext_authz gRPC -> examples/noop_authz (allows everything, empty answer)
#  [wrk -> Envoy -> ext_authz gRPC -> examples/noop_authz --rich (allows everything, answers
#                                     like veto: x-user-id + claims as dynamic metadata)]
#
# Each Envoy renders deploy/envoy/envoy-sidecar.yaml.tmpl, with the route to the app replaced
# by Envoy's own `direct_response` (no upstream process, so only the authz server differs).
# Every request carries the same bearer token (a repeat token: the verified-token cache path,
# revocation check included). The order of the sides rotates every round (veto noop, noop
# veto, ...), so drift in the machine's load hits all of them; medians and ratios are printed
# at the end, with the CPU time per request of each authz server and of its Envoy.
#
#   scripts/bench-envoy.sh              build release, 3 rounds x 10 s per side (~1.5 min
#                                       after the build)
# Environment knobs (defaults in brackets):
#   ROUNDS [3] DURATION [10] (seconds per wrk run) WARMUP [2] THREADS [2] CONNECTIONS [32]
#   ALG [ES256] ENVOY_CONCURRENCY [2] NO_BUILD [0] (1 = use the existing release binaries)
#   RICH_NOOP [0]: 1 = add the third side, `noop_authz --rich`, which splits veto's overhead
#     into "the shape of the answer" (rich/noop) and "deciding" (veto/rich). Adds 50% time.
#   PERF_OUT [unset]: a path; `perf record --call-graph dwarf` of the veto process during its
#     first measured run is written there (it perturbs that run; then:
#     perf report -i PATH --children)
#   KEEP_TMP [0]: 1 = keep the temporary directory (configs, logs, wrk output)
#   HELD [0]: session revocations published (and applied by the sidecar) before the load;
#     held through the run (issue 13 §6 uses 1000000)
#   REVOKE_RATE [0]: revocations per second published during the whole load phase (all
#     sides, so the NATS work is the same for each; issue 13 §6 uses 1000)
#   FORGED_RATES [unset]: forged tokens per second, e.g. "1000 10000 50000": instead of the
#     wrk rounds, the forged-token flood (issue 13 §5; scripts/curves.sh): for 0 (the
#     baseline, first) and each rate, `soak_load forged` straight at the sidecar's gRPC port
#     (no Envoy: what veto pays, not what this 2-core VM's Envoy can carry): a valid-token
#     probe at VALID_RATE [1000]/s, open loop, next to unique forged ES256-shaped tokens
#     (right kid, random signature) at the rate, FORGED_DURATION [10] s each after WARMUP;
#     prints one `FORGED key=value ...` line per rate (valid p50/p99, rates achieved, the
#     sidecar's CPU seconds)
# Targets: veto >= 0.9x the noop server's throughput (>= 0.95x with HELD=1000000
# REVOKE_RATE=1000, issue 13 §6); p99 <= 1.2x the noop server's.
# Everything listens on 127.0.0.1 on free ports and is stopped when the script exits.
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
THREADS="${THREADS:-2}"
CONNECTIONS="${CONNECTIONS:-32}"
ALG="${ALG:-ES256}"
ENVOY_CONCURRENCY="${ENVOY_CONCURRENCY:-2}"
NO_BUILD="${NO_BUILD:-0}"
RICH_NOOP="${RICH_NOOP:-0}"
HELD="${HELD:-0}"
REVOKE_RATE="${REVOKE_RATE:-0}"
FORGED_RATES="${FORGED_RATES:-}"
VALID_RATE="${VALID_RATE:-1000}"
FORGED_DURATION="${FORGED_DURATION:-10}"
TARGET="${CARGO_TARGET_DIR:-$REPO/target}/release"
ISS="https://bench.veto.local"
AUD="bench"

die() {
    echo "bench-envoy: $*" >&2
    exit 1
}
need_tools bench-envoy 1 wrk curl envsubst python3

TMP="$(mktemp -d "${TMPDIR:-/tmp}/veto-bench.XXXXXX")"
PIDS=()
cleanup() {
    stop_pids "${PIDS[@]}"
    if [[ "${KEEP_TMP:-0}" == 1 ]]; then
        echo "bench-envoy: logs kept in $TMP" >&2
    else
        rm -rf "$TMP"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- build -------------------------------------------------------------------------------
if [[ "$NO_BUILD" != 1 ]]; then
    echo "==> cargo build --release (veto, examples noop_authz and soak_load)"
    cargo build --release --quiet --bin veto --example noop_authz --example soak_load
fi
VETO="$TARGET/veto"
NOOP="$TARGET/examples/noop_authz"
LOADGEN="$TARGET/examples/soak_load"
for b in "$VETO" "$NOOP" "$LOADGEN"; do
    [[ -x "$b" ]] || die "$b is missing (run without NO_BUILD=1)"
done

# --- ports -------------------------------------------------------------------------------
# All at once, so they are distinct; each socket is closed before its server binds it.
read -r P_NATS P_VETO_GRPC P_VETO_HTTP P_NOOP P_RICH P_ENVOY_A P_ADMIN_A P_ENVOY_B P_ADMIN_B \
    P_ENVOY_C P_ADMIN_C P_UNUSED < <(free_ports 12)


# --- NATS JetStream (the revocation feed is live during the run) -------------------------
"$VETO_NATS_SERVER_BIN" -a 127.0.0.1 -p "$P_NATS" -js -sd "$TMP/js" >"$TMP/nats.log" 2>&1 &
PIDS+=($!)
wait_port "$P_NATS" 10 || { cat "$TMP/nats.log" >&2; die "nats-server did not start"; }

# --- keys, config, token -----------------------------------------------------------------
"$VETO" keys generate --alg "$ALG" --kid bench --out "$TMP/bench.$ALG.der" >/dev/null
"$VETO" keys jwks "$TMP/bench.$ALG.der" >"$TMP/jwks.json"
cat >"$TMP/veto.toml" <<EOF
[grpc]
listen = "127.0.0.1:$P_VETO_GRPC"
[http]
listen = "127.0.0.1:$P_VETO_HTTP"
[log]
level = "warn"
[[issuers]]
issuer = "$ISS"
audiences = ["$AUD"]
algorithms = ["$ALG"]
jwks_file = "$TMP/jwks.json"
[nats]
url = "nats://127.0.0.1:$P_NATS"
region = "bench"
[revocation]
retention = "1h"
EOF
"$VETO" check-config --config "$TMP/veto.toml" >/dev/null
TOKEN="$("$VETO" keys mint --key "$TMP/bench.$ALG.der" --iss "$ISS" --aud "$AUD" \
    --sub user-1 --sid session-1 --ttl 10m)"
REVOKED_TOKEN="$("$VETO" keys mint --key "$TMP/bench.$ALG.der" --iss "$ISS" --aud "$AUD" \
    --sub user-2 --sid session-revoked --ttl 10m)"

# --- the authz servers -------------------------------------------------------------------
SIDES=(veto noop)
[[ "$RICH_NOOP" != 1 ]] || SIDES+=(rich)
declare -A LISTEN=([veto]=$P_ENVOY_A [noop]=$P_ENVOY_B [rich]=$P_ENVOY_C)
declare -A ADMIN=([veto]=$P_ADMIN_A [noop]=$P_ADMIN_B [rich]=$P_ADMIN_C)
declare -A AUTHZ_PORT=([veto]=$P_VETO_GRPC [noop]=$P_NOOP [rich]=$P_RICH)
declare -A AUTHZ_PID=() ENVOY_PID=()

env -u RUST_LOG "$VETO" sidecar --config "$TMP/veto.toml" >"$TMP/veto.log" 2>&1 &
AUTHZ_PID[veto]=$!
PIDS+=($!)
wait_http "http://127.0.0.1:$P_VETO_HTTP/readyz" '"ready":true' 30 \
    || { cat "$TMP/veto.log" >&2; die "veto sidecar not ready (keys loaded, stream replayed)"; }
if ((HELD > 0)); then
    # after the sidecar has provisioned the stream; it applies them as they arrive
    echo "==> publishing $HELD session revocations"
    "$LOADGEN" revocations --nats "nats://127.0.0.1:$P_NATS" --region bench --count "$HELD" \
        | sed 's/^/    /' || die "publishing $HELD revocations failed"
    held() { curl -fsS "http://127.0.0.1:$P_VETO_HTTP/metrics" | awk '/^veto_revocations_held/ { n += $2 } END { print n + 0 }'; }
    for _ in $(seq 600); do
        (($(held) >= HELD)) && break
        sleep 0.5
    done
    (($(held) >= HELD)) || die "the sidecar holds $(held) revocations, not $HELD"
fi

for side in "${SIDES[@]:1}"; do
    args=("127.0.0.1:${AUTHZ_PORT[$side]}")
    [[ "$side" != rich ]] || args+=(--rich)
    "$NOOP" "${args[@]}" >"$TMP/$side.log" 2>&1 &
    AUTHZ_PID[$side]=$!
    PIDS+=($!)
    wait_port "${AUTHZ_PORT[$side]}" 10 || { cat "$TMP/$side.log" >&2; die "noop_authz ($side) did not start"; }
done

# A few revocations through the real feed: the set is not empty, and one of them is checked
# end to end below.
for what in "--session session-revoked" "--token some-other-token" "--subject some-other-user"; do
    # shellcheck disable=SC2086 # two words on purpose
    "$VETO" revoke $what --nats "nats://127.0.0.1:$P_NATS" --region bench --ttl 1h >/dev/null
done

# --- Envoys ------------------------------------------------------------------------------
start_envoy() { # side
    local side="$1" cfg="$TMP/envoy-$1.yaml"
    # shellcheck disable=SC2016 # envsubst wants the literal ${NAME}s it may replace
    LISTEN_PORT="${LISTEN[$side]}" ADMIN_PORT="${ADMIN[$side]}" AUTHZ_PORT="${AUTHZ_PORT[$side]}" \
        UPSTREAM_PORT="$P_UNUSED" \
        envsubst '${LISTEN_PORT} ${ADMIN_PORT} ${AUTHZ_PORT} ${UPSTREAM_PORT}' \
        <deploy/envoy/envoy-sidecar.yaml.tmpl \
        | sed 's|route: { cluster: upstream }|direct_response: { status: 200, body: { inline_string: "ok" } }|' \
            >"$cfg"
    grep -q 'direct_response' "$cfg" \
        || die "deploy/envoy/envoy-sidecar.yaml.tmpl: route to 'upstream' not found; update this script"
    "$VETO_ENVOY_BIN" -c "$cfg" --use-dynamic-base-id --concurrency "$ENVOY_CONCURRENCY" \
        -l warning --log-path "$TMP/envoy-$side.log" &
    ENVOY_PID[$side]=$!
    PIDS+=($!)
    wait_http "http://127.0.0.1:${ADMIN[$side]}/ready" LIVE 30 \
        || { cat "$TMP/envoy-$side.log" >&2; die "Envoy for $side did not become ready"; }
}
for side in "${SIDES[@]}"; do
    start_envoy "$side"
done

# --- sanity: each side answers as it should ----------------------------------------------
code() { curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$@"; }
VETO_URL="http://127.0.0.1:${LISTEN[veto]}/"
[[ "$(code -H "Authorization: Bearer $TOKEN" "$VETO_URL")" == 200 ]] \
    || die "Envoy->veto: a valid token was not allowed"
[[ "$(code "$VETO_URL")" == 401 ]] || die "Envoy->veto: no token was not refused"
revoked=0
for _ in $(seq 50); do
    if curl -s --max-time 2 -H "Authorization: Bearer $REVOKED_TOKEN" "$VETO_URL" \
        | grep -q '"reason":"revoked"'; then
        revoked=1
        break
    fi
    sleep 0.1
done
((revoked)) || die "Envoy->veto: a revoked session was not refused (feed not live?)"
for side in "${SIDES[@]:1}"; do
    [[ "$(code -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:${LISTEN[$side]}/")" == 200 ]] \
        || die "Envoy->$side: request not allowed"
done
echo "==> sanity ok: veto allows the token, refuses none and a revoked session; ${SIDES[*]:1} allow"

# --- the forged-token flood (FORGED_RATES) ------------------------------------------------
if [[ -n "$FORGED_RATES" ]]; then
    echo "==> forged-token flood straight at the sidecar's gRPC port: valid probe $VALID_RATE/s," \
        "${FORGED_DURATION}s per rate after ${WARMUP}s; $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"
    for rate in 0 $FORGED_RATES; do
        timeout $((WARMUP + FORGED_DURATION + 30)) "$LOADGEN" forged \
            --grpc "http://127.0.0.1:$P_VETO_GRPC" --key "$TMP/bench.$ALG.der" --iss "$ISS" --aud "$AUD" \
            --valid-rate "$VALID_RATE" --forged-rate "$rate" --duration "${FORGED_DURATION}s" \
            --warmup "${WARMUP}s" --sidecar-pid "${AUTHZ_PID[veto]}" --clk-tck "$(getconf CLK_TCK)" \
            || die "soak_load forged failed at $rate/s"
    done
    exit 0
fi

# --- load --------------------------------------------------------------------------------
if awk -v r="$REVOKE_RATE" 'BEGIN { exit !(r > 0) }'; then
    "$LOADGEN" revocations --nats "nats://127.0.0.1:$P_NATS" --region bench --rate "$REVOKE_RATE" \
        >"$TMP/revocations.log" 2>&1 &
    PIDS+=($!)
fi
wrk_report_lua "$TMP/report.lua"
TICK_US=$((1000000 / $(getconf CLK_TCK)))

# run_wrk side seconds [perf] -> "rps p50_us p99_us authz_cpu_us_per_req envoy_cpu_us_per_req"
run_wrk() {
    local side="$1" secs="$2" pid="${AUTHZ_PID[$1]}" envoy="${ENVOY_PID[$1]}" perf_pid=""
    local before after ebefore eafter out
    if [[ "${3:-}" == perf ]]; then
        perf record -q -F 499 --call-graph dwarf,16384 -p "$pid" -o "$PERF_OUT" -- sleep "$secs" \
            >/dev/null 2>&1 &
        perf_pid=$!
    fi
    before="$(cpu_ticks "$pid")" ebefore="$(cpu_ticks "$envoy")"
    out="$(timeout $((secs + 15)) wrk -t"$THREADS" -c"$CONNECTIONS" -d"${secs}s" \
        -H "Authorization: Bearer $TOKEN" -s "$TMP/report.lua" "http://127.0.0.1:${LISTEN[$side]}/")" \
        || die "wrk failed against $side"
    after="$(cpu_ticks "$pid")" eafter="$(cpu_ticks "$envoy")"
    [[ -z "$perf_pid" ]] || wait "$perf_pid" || true
    echo "$out" >>"$TMP/wrk-$side.log"
    local requests duration_us p50 p99 non2xx errors
    read -r _ requests duration_us p50 p99 non2xx errors <<<"$(grep '^RESULT ' <<<"$out")"
    ((non2xx == 0 && errors == 0)) || die "$side: $non2xx non-2xx responses, $errors socket errors"
    awk -v r="$requests" -v d="$duration_us" -v p50="$p50" -v p99="$p99" \
        -v cpu="$(((after - before) * TICK_US))" -v ecpu="$(((eafter - ebefore) * TICK_US))" \
        'BEGIN { printf "%.0f %d %d %.1f %.1f\n", r / d * 1e6, p50, p99, cpu / r, ecpu / r }'
}

echo "==> warm-up ${WARMUP}s per side"
for side in "${SIDES[@]}"; do
    run_wrk "$side" "$WARMUP" >/dev/null
done

echo "==> $ROUNDS rounds x ${DURATION}s per side, wrk -t$THREADS -c$CONNECTIONS, $ALG token," \
    "Envoy --concurrency $ENVOY_CONCURRENCY; $(nproc) CPUs, load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "    revocations: $HELD held before the run, $REVOKE_RATE/s arriving during it"
printf '    %-6s %-5s %10s %9s %9s %17s %17s\n' round side req/s p50_us p99_us authz_cpu_us/req envoy_cpu_us/req
: >"$TMP/results"
n=${#SIDES[@]}
for r in $(seq "$ROUNDS"); do
    for i in $(seq 0 $((n - 1))); do
        side="${SIDES[$(((i + r - 1) % n))]}"
        perf=""
        [[ -z "${PERF_OUT:-}" || "$r$side" != 1veto ]] || perf=perf
        res="$(run_wrk "$side" "$DURATION" $perf)"
        read -r rps p50 p99 cpu ecpu <<<"$res"
        printf '    %-6s %-5s %10s %9s %9s %17s %17s\n' "$r" "$side" "$rps" "$p50" "$p99" "$cpu" "$ecpu"
        echo "$r $side $rps $p50 $p99 $cpu $ecpu" >>"$TMP/results"
    done
done
echo "    load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

echo "==> veto metrics after the run"
curl -fsS "http://127.0.0.1:$P_VETO_HTTP/metrics" \
    | grep -E '^veto_(token_cache_lookups_total|checks_total|revocations_held)' | sed 's/^/    /'

echo "==> summary: medians over $ROUNDS rounds; ratios against noop (per-round: median of the ratios within each round)"
TPUT_TARGET=0.90
((HELD < 1000000)) || ! awk -v r="$REVOKE_RATE" 'BEGIN { exit !(r >= 1000) }' || TPUT_TARGET=0.95
awk -v sides="${SIDES[*]}" -v target="$TPUT_TARGET" "$AWK_MEDIAN"'
function med(side, col,   i, a) { for (i = 1; i <= cnt[side]; i++) a[i] = v[side, i, col]; return median(a, cnt[side]) }
function per_round(side, col,   r, k, a) {
    for (r = 1; r <= rounds; r++) a[++k] = v[side, r, col] / v["noop", r, col]
    return median(a, k)
}
{ cnt[$2]++; if ($1 > rounds) rounds = $1; for (c = 3; c <= 7; c++) v[$2, $1, c] = $c }
END {
    printf "    %-5s %10s %9s %9s %17s %17s\n", "side", "req/s", "p50_us", "p99_us", "authz_cpu_us/req", "envoy_cpu_us/req"
    n = split(sides, s, " ")
    for (i = 1; i <= n; i++)
        printf "    %-5s %10.0f %9.0f %9.0f %17.1f %17.1f\n", s[i], med(s[i], 3), med(s[i], 4), med(s[i], 5), med(s[i], 6), med(s[i], 7)
    N = med("noop", 3); NP = med("noop", 5); V = med("veto", 3); VP = med("veto", 5)
    printf "    veto/noop throughput %.3f (per-round %.3f)  target >= %.2f: %s\n", V / N, per_round("veto", 3), target,
        (V / N >= target) ? "met" : sprintf("MISSED (%.1f%% short)", (target - V / N) / target * 100)
    printf "    veto/noop p99        %.3f (per-round %.3f)  target <= 1.20: %s\n", VP / NP, per_round("veto", 5),
        (VP / NP <= 1.2) ? "met" : sprintf("MISSED (%.1f%% over)", (VP / NP - 1.2) / 1.2 * 100)
    if (cnt["rich"]) {
        R = med("rich", 3)
        printf "    rich/noop throughput %.3f (per-round %.3f): a veto-shaped answer, no decision\n", R / N, per_round("rich", 3)
        printf "    veto/rich throughput %.3f: deciding, with the answer shape equal\n", V / R
    }
}' "$TMP/results"
