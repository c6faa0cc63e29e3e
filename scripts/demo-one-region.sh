#!/usr/bin/env bash
# One region, for real: nats-server (JetStream) + veto sidecar + Envoy + a tiny upstream.
# Shows allow -> revoke -> deny, with the time the revocation took to be enforced.
# Everything runs on 127.0.0.1 on free ports and is torn down on exit.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
prepare_demo

WORK="$(mktemp -d)"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT


NATS_PORT=$(free_port); GRPC=$(free_port); HTTP=$(free_port); UP=$(free_port); LISTEN=$(free_port); ADMIN=$(free_port)

echo "== nats-server (JetStream) on :$NATS_PORT"
"$VETO_NATS_SERVER_BIN" -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$WORK/js" >"$WORK/nats.log" 2>&1 &
PIDS+=($!); wait_port "$NATS_PORT"

echo "== signing key, JWKS, token"
"$VETO" keys generate --kid demo-1 --out "$WORK/demo-1.ES256.der" >/dev/null
"$VETO" keys jwks "$WORK/demo-1.ES256.der" >"$WORK/jwks.json"
TOKEN=$("$VETO" keys mint --key "$WORK/demo-1.ES256.der" --iss https://auth.demo --sub alice --sid sess-42)

cat >"$WORK/veto.toml" <<TOML
[grpc]
listen = "127.0.0.1:$GRPC"
[http]
listen = "127.0.0.1:$HTTP"
[[issuers]]
issuer = "https://auth.demo"
audiences = ["api"]
algorithms = ["ES256"]
jwks_file = "$WORK/jwks.json"
[nats]
url = "nats://127.0.0.1:$NATS_PORT"
region = "us"
[shutdown]
drain = "200ms"
TOML
"$VETO" check-config --config "$WORK/veto.toml"
echo "== veto sidecar (gRPC :$GRPC, HTTP :$HTTP)"
"$VETO" sidecar --config "$WORK/veto.toml" 2>"$WORK/veto.log" &
PIDS+=($!)
for _ in $(seq 1 200); do curl -fs "http://127.0.0.1:$HTTP/readyz" >/dev/null && break; sleep 0.05; done
curl -fs "http://127.0.0.1:$HTTP/readyz"; echo

echo "== upstream on :$UP (echoes the identity Envoy passed on)"
start_upstream "$UP"
PIDS+=("$UPSTREAM_PID")

echo "== Envoy on :$LISTEN (ext_authz -> veto)"
envoy_config "$LISTEN" "$ADMIN" "$GRPC" "$UP" >"$WORK/envoy.yaml"
"$VETO_ENVOY_BIN" -c "$WORK/envoy.yaml" --use-dynamic-base-id -l warning >"$WORK/envoy.log" 2>&1 &
PIDS+=($!); wait_port "$LISTEN"

req() { curl -s -o "$WORK/body" -w '%{http_code}' "$@" "http://127.0.0.1:$LISTEN/orders/7"; }
echo
echo "1) valid token (client also sends a forged x-user-id: admin)"
echo "   -> HTTP $(req -H "authorization: Bearer $TOKEN" -H 'x-user-id: admin')  $(cat "$WORK/body")"
echo "2) no token"
echo "   -> HTTP $(req)  $(cat "$WORK/body")"
echo "3) veto revoke --session sess-42"
"$VETO" revoke --session sess-42 --nats "nats://127.0.0.1:$NATS_PORT" --region us --reason demo | sed 's/^/   /'
start=$(date +%s%N); polls=1
while [ "$(req -H "authorization: Bearer $TOKEN")" != 401 ]; do
    polls=$((polls + 1))
    if (( ($(date +%s%N) - start) > 2000000000 )); then echo "not revoked after 2 s" >&2; exit 1; fi
done
echo "4) same token again (refused on poll #$polls after the CLI returned)"
echo "   -> HTTP $(req -H "authorization: Bearer $TOKEN")  $(cat "$WORK/body")"
sleep 1.1 # let the sidecar's 1 s housekeeping tick refresh its gauges
echo
echo "== sidecar metrics (excerpt)"
curl -s "http://127.0.0.1:$HTTP/metrics" | grep -E '^veto_(checks_total|revocation_events_total|revocations_held|feed_ready)' | sed 's/^/   /'
echo
echo "done; tearing down"
