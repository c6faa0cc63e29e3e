#!/usr/bin/env bash
# Measures the sidecar CPU figures that docs/operations.md "Sizing" quotes: CPU time per
# check, read from /proc/<pid>/stat (utime + stime) of a real `veto sidecar` before and after
# a wrk run, divided by the requests wrk completed. The box may be noisy; the CPU time per
# request is the steady figure (throughput and latency are printed too, but they depend on
# what else runs). Three loads, in rotating order each round, on one machine in one run:
#
#   healthz   GET /healthz on the sidecar's HTTP listener: the HTTP stack alone (baseline:
#             same process, same listener, no decision)
#   repeat    GET /check, one token for every request: the verified-token cache path (no
#             signature verification), revocation check included
#   distinct  GET /check, TOKENS distinct tokens in rotation, on a second sidecar whose
#             verified-token cache holds one token (cache.max_tokens = 1): every check parses
#             and verifies the signature (ALG); the cache hit ratio is printed as proof
#
# Both sidecars follow a live NATS JetStream feed (one local nats-server, a few revocations
# published) exactly as in production, and their idle RSS (after ready, before any load) and
# RSS after the run are printed.
#
#   scripts/measure-sizing.sh           build release if needed, 2 rounds x 10 s per load
#                                       (~3 min after the build, most of it minting tokens
#                                       and the 6 wrk runs)
# Environment knobs (defaults in brackets):
#   ROUNDS [2] DURATION [10] (seconds per wrk run) WARMUP [2] THREADS [1] CONNECTIONS [16]
#   TOKENS [1000] ALG [ES256] NO_BUILD [0] (1 = use the existing target/release/veto)
#   KEEP_TMP [0] (1 = keep the temporary directory: configs, logs, wrk output)
# Everything listens on 127.0.0.1 on free ports and is stopped when the script exits.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
# env.sh also looks for Envoy and promtool, which this script does not need.
# shellcheck source=scripts/env.sh
source scripts/env.sh 2>/dev/null || true
# shellcheck source=scripts/lib.sh
source scripts/lib.sh # free_ports, wait_port, wait_http, stop_pids, wrk_report_lua

ROUNDS="${ROUNDS:-2}"
DURATION="${DURATION:-10}"
WARMUP="${WARMUP:-2}"
THREADS="${THREADS:-1}"
CONNECTIONS="${CONNECTIONS:-16}"
TOKENS="${TOKENS:-1000}"
ALG="${ALG:-ES256}"
NO_BUILD="${NO_BUILD:-0}"
TARGET="${CARGO_TARGET_DIR:-$REPO/target}/release"
ISS="https://sizing.veto.local"
AUD="sizing"

die() {
    echo "measure-sizing: $*" >&2
    exit 1
}
[[ -x "${VETO_NATS_SERVER_BIN:-}" ]] || die "no nats-server (VETO_NATS_SERVER_BIN); run scripts/install-deps.sh"
for tool in wrk curl python3 awk; do
    command -v "$tool" >/dev/null || die "$tool is not installed"
done

TMP="$(mktemp -d "${TMPDIR:-/tmp}/veto-sizing.XXXXXX")"
PIDS=()
cleanup() {
    stop_pids "${PIDS[@]}"
    if [[ "${KEEP_TMP:-0}" == 1 ]]; then
        echo "measure-sizing: files kept in $TMP" >&2
    else
        rm -rf "$TMP"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [[ "$NO_BUILD" != 1 ]]; then
    echo "==> cargo build --release --bin veto"
    cargo build --release --quiet --bin veto
fi
VETO="$TARGET/veto"
[[ -x "$VETO" ]] || die "$VETO is missing (run without NO_BUILD=1)"

read -r P_NATS P_MON P_A_GRPC P_A_HTTP P_B_GRPC P_B_HTTP < <(free_ports 6)


# --- NATS JetStream ------------------------------------------------------------------------
"$VETO_NATS_SERVER_BIN" -a 127.0.0.1 -p "$P_NATS" -m "$P_MON" -js -sd "$TMP/js" >"$TMP/nats.log" 2>&1 &
PIDS+=($!)
deadline=$((SECONDS + 10))
until (: </dev/tcp/127.0.0.1/"$P_NATS") 2>/dev/null; do
    ((SECONDS < deadline)) || { cat "$TMP/nats.log" >&2; die "nats-server did not start"; }
    sleep 0.1
done

# --- keys, tokens, configs -----------------------------------------------------------------
"$VETO" keys generate --alg "$ALG" --kid sizing --out "$TMP/sizing.$ALG.der" >/dev/null
"$VETO" keys jwks "$TMP/sizing.$ALG.der" >"$TMP/jwks.json"
mint() { # sub sid
    "$VETO" keys mint --key "$TMP/sizing.$ALG.der" --iss "$ISS" --aud "$AUD" --sub "$1" \
        --sid "$2" --ttl 10m
}
TOKEN="$(mint user-1 session-1)"
echo "==> minting $TOKENS distinct $ALG tokens"
export -f mint
export VETO TMP ISS AUD ALG
seq "$TOKENS" | xargs -P "$(nproc)" -I{} bash -c 'mint user-{} session-{}' >"$TMP/tokens.txt"
[[ "$(wc -l <"$TMP/tokens.txt")" == "$TOKENS" ]] || die "minting failed"

config() { # grpc-port http-port max-tokens
    cat <<EOF
[grpc]
listen = "127.0.0.1:$1"
[http]
listen = "127.0.0.1:$2"
[log]
level = "warn"
[cache]
max_tokens = $3
[[issuers]]
issuer = "$ISS"
audiences = ["$AUD"]
algorithms = ["$ALG"]
jwks_file = "$TMP/jwks.json"
[nats]
url = "nats://127.0.0.1:$P_NATS"
region = "sizing"
[revocation]
retention = "1h"
EOF
}
config "$P_A_GRPC" "$P_A_HTTP" 100000 >"$TMP/a.toml"
config "$P_B_GRPC" "$P_B_HTTP" 1 >"$TMP/b.toml"
for c in a b; do
    "$VETO" check-config --config "$TMP/$c.toml" >/dev/null
done

declare -A PID=() HTTP=([a]=$P_A_HTTP [b]=$P_B_HTTP)
for c in a b; do
    env -u RUST_LOG "$VETO" sidecar --config "$TMP/$c.toml" >"$TMP/$c.log" 2>&1 &
    PID[$c]=$!
    PIDS+=($!)
done
for c in a b; do
    wait_http "http://127.0.0.1:${HTTP[$c]}/readyz" '"ready":true' 30 \
        || { cat "$TMP/$c.log" >&2; die "sidecar $c not ready"; }
done
# A few revocations through the real feed, so the set is not empty; one is checked below.
for what in "--session session-revoked" "--token some-other-token" "--subject some-other-user"; do
    # shellcheck disable=SC2086 # two words on purpose
    "$VETO" revoke $what --nats "nats://127.0.0.1:$P_NATS" --region sizing --ttl 1h >/dev/null
done
REVOKED="$(mint user-x session-revoked)"
code() { curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$@"; }
for c in a b; do
    url="http://127.0.0.1:${HTTP[$c]}/check"
    [[ "$(code -H "Authorization: Bearer $TOKEN" "$url")" == 200 ]] || die "sidecar $c: valid token not allowed"
    ok=0
    for _ in $(seq 50); do
        [[ "$(code -H "Authorization: Bearer $REVOKED" "$url")" != 401 ]] || { ok=1 && break; }
        sleep 0.1
    done
    ((ok)) || die "sidecar $c: revoked session not refused (feed not live?)"
done
echo "==> sanity ok: both sidecars allow a valid token and refuse a revoked session"
# What one revocation costs in the JetStream file store (the stream holds only the events
# published above: no heartbeat publisher runs here).
curl -fsS "http://127.0.0.1:$P_MON/jsz?streams=true" | python3 -c '
import json, sys
for acc in json.load(sys.stdin).get("account_details", []):
    for st in acc.get("stream_detail", []):
        s = st["state"]
        if s["messages"]:
            print("==> stream %s: %d events, %d bytes stored (%.0f B per event)"
                  % (st["name"], s["messages"], s["bytes"], s["bytes"] / s["messages"]))
' || echo "==> (stream size not read)"

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
sleep 1
IDLE_A="$(rss_kib "${PID[a]}")" IDLE_B="$(rss_kib "${PID[b]}")"

# --- wrk scripts -----------------------------------------------------------------------------
wrk_report_lua "$TMP/report.lua"
{
    cat <<'LUA'
local tokens = {}
local i = 0
init = function(args)
  for line in io.lines(args[1]) do tokens[#tokens + 1] = line end
  i = math.random(#tokens)
end
request = function()
  i = i % #tokens + 1
  return wrk.format("GET", "/check", { ["Authorization"] = "Bearer " .. tokens[i] })
end
LUA
    cat "$TMP/report.lua"
} >"$TMP/distinct.lua"

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
TICK_US=$((1000000 / $(getconf CLK_TCK)))

# run load seconds -> "rps p50_us p99_us cpu_us_per_req cpu_busy_pct load1"
run() {
    local load="$1" secs="$2" c url args=() tail=() before after out t0 t1
    case "$load" in
    healthz) c=a url="http://127.0.0.1:$P_A_HTTP/healthz" args=(-s "$TMP/report.lua") ;;
    repeat) c=a url="http://127.0.0.1:$P_A_HTTP/check" args=(-H "Authorization: Bearer $TOKEN" -s "$TMP/report.lua") ;;
    distinct) c=b url="http://127.0.0.1:$P_B_HTTP/check" args=(-s "$TMP/distinct.lua") tail=(-- "$TMP/tokens.txt") ;;
    fill) c=a url="http://127.0.0.1:$P_A_HTTP/check" args=(-s "$TMP/distinct.lua") tail=(-- "$TMP/tokens.txt") ;;
    esac
    before="$(cpu_ticks "${PID[$c]}")" t0="$(date +%s%N)"
    out="$(timeout $((secs + 15)) wrk -t"$THREADS" -c"$CONNECTIONS" -d"${secs}s" "${args[@]}" "$url" \
        "${tail[@]}")" || die "wrk failed ($load)"
    after="$(cpu_ticks "${PID[$c]}")" t1="$(date +%s%N)"
    echo "$out" >>"$TMP/wrk-$load.log"
    local requests duration_us p50 p99 non2xx errors
    read -r _ requests duration_us p50 p99 non2xx errors <<<"$(grep '^RESULT ' <<<"$out")"
    ((non2xx == 0 && errors == 0)) || die "$load: $non2xx non-2xx responses, $errors socket errors"
    awk -v r="$requests" -v d="$duration_us" -v p50="$p50" -v p99="$p99" \
        -v cpu="$(((after - before) * TICK_US))" -v wall="$(((t1 - t0) / 1000))" \
        -v la="$(cut -d' ' -f1 /proc/loadavg)" \
        'BEGIN { printf "%.0f %d %d %.1f %.0f %s\n", r / d * 1e6, p50, p99, cpu / r, cpu / wall * 100, la }'
}

LOADS=(healthz repeat distinct)
echo "==> warm-up ${WARMUP}s per load"
for load in "${LOADS[@]}"; do
    run "$load" "$WARMUP" >/dev/null
done

echo "==> $ROUNDS rounds x ${DURATION}s per load, wrk -t$THREADS -c$CONNECTIONS (keep-alive), $ALG," \
    "$TOKENS distinct tokens; $(nproc) CPUs; load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '    %-5s %-8s %9s %7s %7s %12s %9s %6s\n' round load req/s p50_us p99_us cpu_us/req sidecar% load1
: >"$TMP/results"
n=${#LOADS[@]}
for r in $(seq "$ROUNDS"); do
    for i in $(seq 0 $((n - 1))); do
        load="${LOADS[$(((i + r - 1) % n))]}"
        read -r rps p50 p99 cpu busy la <<<"$(run "$load" "$DURATION")"
        printf '    %-5s %-8s %9s %7s %7s %12s %9s %6s\n' "$r" "$load" "$rps" "$p50" "$p99" "$cpu" "$busy" "$la"
        echo "$load $rps $p50 $p99 $cpu" >>"$TMP/results"
    done
done
echo "    load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

hits_misses() { # port -> "hits misses"
    curl -fsS "http://127.0.0.1:$1/metrics" | awk '
        /^veto_token_cache_lookups_total\{.*result="hit"/ { h = $NF }
        /^veto_token_cache_lookups_total\{.*result="miss"/ { m = $NF }
        END { printf "%d %d\n", h, m }'
}
read -r AH AM <<<"$(hits_misses "$P_A_HTTP")"
read -r BH BM <<<"$(hits_misses "$P_B_HTTP")"
# The verified-token cache's memory: the repeat sidecar (cache.max_tokens = 100000) sees
# every distinct token (each verified once, then cached); its RSS growth per token.
BEFORE_FILL="$(rss_kib "${PID[a]}")"
run fill 3 >/dev/null
sleep 1
AFTER_FILL="$(rss_kib "${PID[a]}")"

echo "==> verified-token cache: repeat sidecar $AH hits / $AM misses; distinct sidecar $BH hits / $BM misses"
echo "==> RSS: idle (ready, before load) repeat sidecar $((IDLE_A / 1024)) MiB ($IDLE_A KiB)," \
    "distinct sidecar $((IDLE_B / 1024)) MiB; after the run (and the cache fill) $(($(rss_kib "${PID[a]}") / 1024)) MiB /" \
    "$(($(rss_kib "${PID[b]}") / 1024)) MiB"

awk -v b="$BEFORE_FILL" -v a="$AFTER_FILL" -v n="$TOKENS" -v len="$(head -1 "$TMP/tokens.txt" | wc -c)" \
    'BEGIN { printf "==> verified-token cache: RSS %.1f -> %.1f MiB after caching %d distinct tokens (%d-byte tokens): ~%.0f B per cached token\n", b / 1024, a / 1024, n, len - 1, (a - b) * 1024 / n }'

echo "==> summary: medians over $ROUNDS rounds (cores per 1k checks/s = cpu_us/req / 1000)"
awk '
function median(a, n,   i, j, t) {
    for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
    return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
function med(load, col,   i, a) { for (i = 1; i <= cnt[load]; i++) a[i] = v[load, i, col]; return median(a, cnt[load]) }
{ k = ++cnt[$1]; for (c = 2; c <= 5; c++) v[$1, k, c] = $c }
END {
    printf "    %-8s %9s %7s %7s %12s %18s\n", "load", "req/s", "p50_us", "p99_us", "cpu_us/req", "cores per 1k/s"
    split("healthz repeat distinct", l, " ")
    for (i = 1; i <= 3; i++)
        printf "    %-8s %9.0f %7.0f %7.0f %12.1f %18.3f\n", l[i], med(l[i], 2), med(l[i], 3), med(l[i], 4), med(l[i], 5), med(l[i], 5) / 1000
    h = med("healthz", 5)
    printf "    deciding over the bare HTTP answer: repeat +%.1f us, distinct +%.1f us per check\n", med("repeat", 5) - h, med("distinct", 5) - h
}' "$TMP/results"
