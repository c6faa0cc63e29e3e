#!/usr/bin/env bash
# Soak test (issue 12 §4; not CI): a steady open-loop load of checks through a real Envoy
# while revocations arrive on the live NATS JetStream feed and the sidecar prunes them,
# sampled every minute:
#
#   examples/soak_load (open loop, --rate checks/s) -> Envoy -> ext_authz gRPC -> veto sidecar
#                                                           -> router -> do-nothing upstream
#   examples/soak_load (--revocations-per-second) -> JetStream stream -> veto sidecar's feed
#
# Everything runs on 127.0.0.1 on free ports: nats-server (JetStream; the stream provisioned
# with `veto nats provision`), a release `veto sidecar`, Envoy with the shipped
# deploy/envoy/envoy-sidecar.yaml.tmpl, the upstream (`soak_load upstream`). All are stopped
# on exit, Ctrl-C or TERM.
#
# The load (see examples/soak_load.rs): request k is due at start + k/rate and its latency is
# measured from that instant (no coordinated omission); a fixed pool of keep-alive
# connections; 50% one repeat token, 49% a pool of 1000 distinct valid tokens (re-minted
# before expiry), 1% tokens of revoked sessions, which must be refused `revoked`. Each
# revocation is held --revocation-ttl (the revoked token's remaining lifetime), so the
# revoked set grows for one TTL and then plateaus at rate x TTL; pruning runs every
# --prune-interval.
#
# Every minute, into OUT/minutes.csv (and printed): achieved checks/s, checks the generator
# could not send (its backlog cap of 2 s), errors by kind, revoked tokens refused, p50/p99/
# p99.9/max latency, sidecar RSS (VmRSS), sidecar and Envoy CPU per check (utime+stime),
# veto_revocations_held against the expected count, veto_revocations_table_bytes, load
# average. At the end (OUT/summary.txt, OUT/soak.svg): the RSS slope (least squares, MiB/h,
# through the maxima of 5-sample windows: the allocator may flip between two states a MiB
# apart, which tilts a line through the raw samples; that slope is printed too) over the
# samples after the plateau against the tables' own slope, p99 of the last quarter
# against the first, total errors, the achieved rate; PASS/FAIL against the targets:
#   memory flat beyond the revoked set's own growth (<= 1 MiB/h), no error, p99 last/first
#   quarter <= 1.5, revoked set at rate x TTL (pruning works), rate achieved >= 98%.
# The exit status is 0 on PASS, 1 on FAIL.
#
#   scripts/soak.sh                          one hour at 10k checks/s, 100 revocations/s held
#                                            15 min (plateau 90k entries after 16 min); run it
#                                            on an idle machine: it needs every core
#   scripts/soak.sh --minutes 3 --rate 2000 --revocation-ttl 60s   a short try
# Options (defaults in brackets):
#   --minutes N [60]  --rate CHECKS_PER_S [10000]  --revocations-per-second N [100]
#   --out DIR [target/soak/<UTC time>]  --revocation-ttl DURATION [15m]
#   --prune-interval DURATION [60s] (revocation.prune_interval)  --connections N [32]
#   --envoy-concurrency N [2]  --warmup DURATION [10s]  --no-build (use the existing
#   target/release/veto and examples/soak_load; otherwise `cargo build --release`, which
#   reuses them when they are fresh)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
# env.sh also looks for promtool, which this script does not need: judge what it found here.
# shellcheck source=scripts/env.sh
source scripts/env.sh 2>/dev/null || true
# shellcheck source=scripts/lib.sh
source scripts/lib.sh # free_ports, wait_port, wait_http, stop_pids, need_tools

MINUTES=60 RATE=10000 REVOCATIONS=100 OUT="" TTL=15m PRUNE=60s CONNECTIONS=32
ENVOY_CONCURRENCY=2 WARMUP=10s BUILD=1
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
while (($#)); do
    case "$1" in
    --minutes) MINUTES="$2" && shift ;;
    --rate) RATE="$2" && shift ;;
    --revocations-per-second) REVOCATIONS="$2" && shift ;;
    --out) OUT="$2" && shift ;;
    --revocation-ttl) TTL="$2" && shift ;;
    --prune-interval) PRUNE="$2" && shift ;;
    --connections) CONNECTIONS="$2" && shift ;;
    --envoy-concurrency) ENVOY_CONCURRENCY="$2" && shift ;;
    --warmup) WARMUP="$2" && shift ;;
    --no-build) BUILD=0 ;;
    -h | --help) usage && exit 0 ;;
    *) echo "soak: unknown option $1 (see --help)" >&2 && exit 64 ;;
    esac
    shift
done

die() {
    echo "soak: $*" >&2
    exit 2
}
need_tools soak 2 curl envsubst python3

TARGET="${CARGO_TARGET_DIR:-$REPO/target}/release"
OUT="${OUT:-$TARGET/../soak/$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
WORK="$OUT/run" # configs, keys, logs; the JetStream store is removed at the end
mkdir -p "$WORK"
ISS="https://soak.veto.local"
AUD="soak"
REGION="soak"

PIDS=()
cleanup() {
    stop_pids "${PIDS[@]}"
    rm -rf "$WORK/js"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- build -------------------------------------------------------------------------------
if ((BUILD)); then
    echo "==> cargo build --release (veto, example soak_load; reused if fresh)"
    cargo build --release --quiet --bin veto --example soak_load
fi
VETO="$TARGET/veto"
LOAD="$TARGET/examples/soak_load"
for b in "$VETO" "$LOAD"; do
    [[ -x "$b" ]] || die "$b is missing (run without --no-build)"
done

# --- ports (all at once, so they are distinct) -------------------------------------------
read -r P_NATS P_MON P_GRPC P_HTTP P_UP P_ENVOY P_ADMIN < <(free_ports 7)

# --- NATS JetStream, the stream ------------------------------------------------------------
# The region's JetStream domain is the region's name, as `veto nats topology` lays it out.
cat >"$WORK/nats.conf" <<EOF
listen: "127.0.0.1:$P_NATS"
http: "127.0.0.1:$P_MON"
jetstream { store_dir: "$WORK/js", domain: "$REGION" }
EOF
"$VETO_NATS_SERVER_BIN" -c "$WORK/nats.conf" >"$WORK/nats.log" 2>&1 &
NATS_PID=$!
PIDS+=("$NATS_PID")
wait_port "$P_NATS" 10 || { cat "$WORK/nats.log" >&2; die "nats-server did not start"; }
NATS_URL="nats://127.0.0.1:$P_NATS"
"$VETO" nats provision --nats "$NATS_URL" --region "$REGION" --regions "$REGION" --retention 2h \
    >"$WORK/provision.log" 2>&1 || { cat "$WORK/provision.log" >&2; die "stream provisioning failed"; }

# --- keys, config, sidecar -----------------------------------------------------------------
KEY="$WORK/soak.ES256.der"
"$VETO" keys generate --alg ES256 --kid soak --out "$KEY" >/dev/null
"$VETO" keys jwks "$KEY" >"$WORK/jwks.json"
cat >"$WORK/veto.toml" <<EOF
[grpc]
listen = "127.0.0.1:$P_GRPC"
[http]
listen = "127.0.0.1:$P_HTTP"
[log]
level = "warn"
[[issuers]]
issuer = "$ISS"
audiences = ["$AUD"]
algorithms = ["ES256"]
jwks_file = "$WORK/jwks.json"
max_token_lifetime = "1h"
[nats]
url = "$NATS_URL"
region = "$REGION"
domain = "$REGION"
ensure_stream = false
[revocation]
retention = "2h"
prune_interval = "$PRUNE"
EOF
"$VETO" check-config --config "$WORK/veto.toml" >/dev/null
env -u RUST_LOG "$VETO" sidecar --config "$WORK/veto.toml" >"$WORK/veto.log" 2>&1 &
VETO_PID=$!
PIDS+=("$VETO_PID")
wait_http "http://127.0.0.1:$P_HTTP/readyz" '"ready":true' 30 \
    || { cat "$WORK/veto.log" >&2; die "veto sidecar not ready"; }

# --- upstream, Envoy ---------------------------------------------------------------------
"$LOAD" upstream "127.0.0.1:$P_UP" >"$WORK/upstream.log" 2>&1 &
PIDS+=($!)
wait_port "$P_UP" 10 || { cat "$WORK/upstream.log" >&2; die "upstream did not start"; }
# shellcheck disable=SC2016 # envsubst wants the literal ${NAME}s it may replace
LISTEN_PORT="$P_ENVOY" ADMIN_PORT="$P_ADMIN" AUTHZ_PORT="$P_GRPC" UPSTREAM_PORT="$P_UP" \
    envsubst '${LISTEN_PORT} ${ADMIN_PORT} ${AUTHZ_PORT} ${UPSTREAM_PORT}' \
    <deploy/envoy/envoy-sidecar.yaml.tmpl >"$WORK/envoy.yaml"
"$VETO_ENVOY_BIN" -c "$WORK/envoy.yaml" --use-dynamic-base-id --concurrency "$ENVOY_CONCURRENCY" \
    -l warning --log-path "$WORK/envoy.log" &
ENVOY_PID=$!
PIDS+=("$ENVOY_PID")
wait_http "http://127.0.0.1:$P_ADMIN/ready" LIVE 30 || { cat "$WORK/envoy.log" >&2; die "Envoy did not become ready"; }

# --- sanity: allow, refuse no token, refuse a session revoked through the feed -----------
URL="http://127.0.0.1:$P_ENVOY/"
mint() { "$VETO" keys mint --key "$KEY" --iss "$ISS" --aud "$AUD" --sub "$1" --sid "$2" --ttl 10m; }
code() { curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$@"; }
[[ "$(code -H "Authorization: Bearer $(mint sanity-user sanity-session)" "$URL")" == 200 ]] \
    || die "Envoy->veto->upstream: a valid token was not allowed"
[[ "$(code "$URL")" == 401 ]] || die "Envoy->veto: no token was not refused"
REVOKED="$(mint sanity-user sanity-revoked)"
"$VETO" revoke --session sanity-revoked --nats "$NATS_URL" --region "$REGION" --domain "$REGION" --ttl 10m >/dev/null
ok=0
for _ in $(seq 50); do
    if curl -s --max-time 2 -H "Authorization: Bearer $REVOKED" "$URL" | grep -q '"reason":"revoked"'; then
        ok=1 && break
    fi
    sleep 0.1
done
((ok)) || die "Envoy->veto: a revoked session was not refused (feed not live?)"
echo "==> sanity ok: allowed, no token refused, a revoked session refused; $(nproc) CPUs," \
    "load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "==> $MINUTES min at $RATE checks/s, $REVOCATIONS revocations/s held $TTL (prune every $PRUNE); output in $OUT"

# --- the soak ------------------------------------------------------------------------------
status=0
"$LOAD" run --url "$URL" --key "$KEY" --iss "$ISS" --aud "$AUD" --nats "$NATS_URL" \
    --region "$REGION" --domain "$REGION" --sidecar-pid "$VETO_PID" --envoy-pid "$ENVOY_PID" \
    --metrics "http://127.0.0.1:$P_HTTP/metrics" --out "$OUT" --rate "$RATE" \
    --minutes "$MINUTES" --revocations-per-second "$REVOCATIONS" --revocation-ttl "$TTL" \
    --prune-interval "$PRUNE" --connections "$CONNECTIONS" --warmup "$WARMUP" \
    --clk-tck "$(getconf CLK_TCK)" 2>&1 | tee "$OUT/soak.log" || status=$?
kill -0 "$VETO_PID" 2>/dev/null || { echo "soak: the sidecar died; its log:" >&2 && tail -20 "$WORK/veto.log" >&2; status=1; }
curl -fsS "http://127.0.0.1:$P_HTTP/metrics" >"$WORK/metrics-end.txt" 2>/dev/null || true
exit "$status"
