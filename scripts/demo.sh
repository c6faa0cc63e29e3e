#!/usr/bin/env bash
# The Veto demo: three regions (us, eu, ap) for real, on this machine.
#
#   per region: a core-NATS hub (gateways between all hubs) + a JetStream server in its own
#               domain (leaf of the hub), a veto authority (sessions, refresh, JWKS, the
#               region's heartbeat), a veto sidecar, Envoy, and a tiny upstream
#
# It mints a token, shows 200 in every region, revokes the session in us, shows 401 everywhere
# with the measured lag per region, cuts eu off (kills its hub), shows staleness and the deny
# policy at work, heals it, shows the catch-up; then logs in through the authority in us,
# refreshes in eu, calls in ap, logs out in ap and shows every region refusing the session;
# then (step 6, scripts/demo-browser.mjs) a headless Chromium tab logged in through us is logged
# out over its us socket by a revocation made in eu (skipped, saying why, without node, Chromium
# or playwright-core); prints a summary, and tears everything down.
# Everything listens on 127.0.0.1; nothing is left running.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
prepare_demo
REGIONS=(us eu ap)
MAX_STALENESS=4

WORK="$(mktemp -d)"
declare -A PID
cleanup() {
    for p in "${PID[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [ -n "${VETO_DEMO_KEEP:-}" ] && echo "kept $WORK" || rm -rf "$WORK"
}
trap cleanup EXIT

# A base port whose next 30 ports are all free (the topology uses base+10*i .. base+10*i+5).
free_base() {
    python3 - <<'PY'
import random, socket
for _ in range(200):
    base = random.randrange(20000, 60000, 100)
    socks = []
    try:
        for p in range(base, base + 30):
            s = socket.socket(); s.bind(("127.0.0.1", p)); socks.append(s)
        print(base); break
    except OSError:
        pass
    finally:
        for s in socks: s.close()
PY
}
start() { # name, log, command...
    local name=$1 log=$2; shift 2
    "$@" >"$log" 2>&1 &
    PID[$name]=$!
}

BASE=$(free_base)
# The shipped shape: no anonymous user, a random password per NATS user (the configs only
# reference them; the servers get them from <out>/secrets.env, clients from
# <out>/passwords/<user>). Sidecars log in as the feed-only `sidecar`, authorities (which host
# the heartbeats, theirs alone) as `authority`, `veto nats provision` as `operator` and
# `veto revoke` as `revoker`.
"$VETO" nats topology --regions us,eu,ap --base-port "$BASE" --store "$WORK/js" --out "$WORK/nats" >/dev/null
PW="$WORK/nats/passwords"
login() { echo --nats-user "$1" --nats-password-file "$PW/$1"; }
# nats-server with the topology's secrets in its environment (and only nats-server); only
# through `start` (exec: the PID it records is the server's own).
# shellcheck disable=SC2046
nats_server() { exec env $(grep -v '^#' "$WORK/nats/secrets.env") "$VETO_NATS_SERVER_BIN" "$@"; }
# shellcheck disable=SC1091
source "$WORK/nats/ports.env"
url_of() { local v="VETO_NATS_${1^^}_URL"; echo "${!v}"; }
hub_port_of() { local v="VETO_NATS_${1^^}_HUB_URL"; echo "${!v##*:}"; }
start_hub() { start "$1-hub" "$WORK/$1-hub.log" nats_server -c "$WORK/nats/$1-hub.conf"; wait_port "$(hub_port_of "$1")"; }

echo "== NATS: 3 hubs (gateways) + 3 JetStream domains (leaf nodes), base port $BASE"
for r in "${REGIONS[@]}"; do start_hub "$r"; done
for r in "${REGIONS[@]}"; do
    start "$r-js" "$WORK/$r-js.log" nats_server -c "$WORK/nats/$r-js.conf"
    u=$(url_of "$r"); wait_port "${u##*:}"
done
echo "== provisioning streams (each captures its region, sources the others)"
for r in "${REGIONS[@]}"; do
    for _ in $(seq 1 50); do
        # shellcheck disable=SC2046
        if out=$("$VETO" nats provision --nats "$(url_of "$r")" --region "$r" --regions us,eu,ap --retention 1h --timeout 2s $(login operator) 2>&1); then
            echo "   $r: $out"; break
        fi
        sleep 0.2
    done
done

echo "== authorities in us, eu, ap (one issuer, one key set, one refresh MAC key; each hosts its region's heartbeat)"
AUTH_ISS=https://auth.veto.demo
mkdir -p "$WORK/authkeys"
"$VETO" keys generate --alg ES256 --kid auth-1 --out "$WORK/authkeys" >/dev/null
python3 -c 'import base64,secrets; print("r1=" + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("="))' >"$WORK/refresh.keys"
python3 -c 'import secrets; print(secrets.token_urlsafe(32))' >"$WORK/admin.token"
ADMIN=$(cat "$WORK/admin.token")
declare -A AUTH AUTH_HTTP
PAGE_PORT=$(free_port)   # step 6's page (scripts/demo-browser.mjs): its origin is a CORS origin
for r in "${REGIONS[@]}"; do
    AUTH[$r]=$(free_port); AUTH_HTTP[$r]=$(free_port)
    cat >"$WORK/$r-authority.toml" <<TOML
[http]
listen = "127.0.0.1:${AUTH_HTTP[$r]}"
[nats]
url = "$(url_of "$r")"
region = "$r"
regions = ["us", "eu", "ap"]
user = "authority"
password_file = "$PW/authority"
[revocation]
retention = "1h"
[shutdown]
drain = "200ms"
[authority]
listen = "127.0.0.1:${AUTH[$r]}"
issuer = "$AUTH_ISS"
audiences = ["api"]
keys_dir = "$WORK/authkeys"
admin_token_file = "$WORK/admin.token"
refresh_key_file = "$WORK/refresh.keys"
heartbeat_interval = "500ms"
cors_origins = ["http://127.0.0.1:$PAGE_PORT"]
TOML
    start "$r-authority" "$WORK/$r-authority.log" "$VETO" authority --config "$WORK/$r-authority.toml"
done
for r in "${REGIONS[@]}"; do
    for _ in $(seq 1 600); do curl -fs "http://127.0.0.1:${AUTH_HTTP[$r]}/readyz" >/dev/null && break; sleep 0.05; done
    curl -fs "http://127.0.0.1:${AUTH_HTTP[$r]}/readyz" >/dev/null || { echo "authority $r not ready: $(curl -s "http://127.0.0.1:${AUTH_HTTP[$r]}/readyz")"; exit 1; }
done

echo "== signing key, JWKS, token for alice (session sess-1)"
"$VETO" keys generate --kid demo-1 --out "$WORK/demo-1.ES256.der" >/dev/null
"$VETO" keys jwks "$WORK/demo-1.ES256.der" >"$WORK/jwks.json"
# mint SUB SID [HOME]: HOME is the session's home region (claim veto_home)
mint() { "$VETO" keys mint --key "$WORK/demo-1.ES256.der" --iss https://auth.demo --sub "$1" --sid "$2" ${3:+--home "$3"}; }
T1=$(mint alice sess-1)
T2=$(mint bob sess-2 us)
T_US=$(mint dave sess-4 us)
T_EU=$(mint erin sess-5 eu)

declare -A HTTP LISTEN
UP=$(free_port)
start_upstream "$UP"
PID[upstream]=$UPSTREAM_PID

for r in "${REGIONS[@]}"; do
    grpc=$(free_port); HTTP[$r]=$(free_port); LISTEN[$r]=$(free_port); admin=$(free_port)
    cat >"$WORK/$r.toml" <<TOML
[grpc]
listen = "127.0.0.1:$grpc"
[http]
listen = "127.0.0.1:${HTTP[$r]}"
[[issuers]]
issuer = "https://auth.demo"
audiences = ["api"]
algorithms = ["ES256"]
jwks_file = "$WORK/jwks.json"
[[issuers]]
issuer = "$AUTH_ISS"
audiences = ["api"]
algorithms = ["ES256"]
jwks_url = "http://127.0.0.1:${AUTH[$r]}/.well-known/jwks.json"
[nats]
url = "$(url_of "$r")"
region = "$r"
regions = ["us", "eu", "ap"]
catchup_after = "1500ms"
user = "sidecar"
password_file = "$PW/sidecar"
[revocation]
retention = "1h"
max_staleness = "${MAX_STALENESS}s"
on_stale = "deny"
[shutdown]
drain = "200ms"   # the demo tears down at once; in a pod the default 5 s drain applies
TOML
    start "$r-veto" "$WORK/$r-veto.log" "$VETO" sidecar --config "$WORK/$r.toml"
    envoy_config "${LISTEN[$r]}" "$admin" "$grpc" "$UP" >"$WORK/$r-envoy.yaml"
    start "$r-envoy" "$WORK/$r-envoy.log" "$VETO_ENVOY_BIN" -c "$WORK/$r-envoy.yaml" --use-dynamic-base-id -l warning --concurrency 1
done
echo "== sidecars + Envoy in us, eu, ap; waiting for ready (keys loaded, stream replayed, own origin fresh)"
for r in "${REGIONS[@]}"; do
    wait_port "${LISTEN[$r]}"
    for _ in $(seq 1 400); do curl -fs "http://127.0.0.1:${HTTP[$r]}/readyz" >/dev/null && break; sleep 0.025; done
    curl -fs "http://127.0.0.1:${HTTP[$r]}/readyz" >/dev/null || { echo "$r not ready: $(curl -s "http://127.0.0.1:${HTTP[$r]}/readyz")"; exit 1; }
done
# Stream sourcing of freshly provisioned regions starts on nats-server's retry timers (seconds):
# wait until every sidecar hears every origin, as a settled system does.
all_fresh() {
    curl -s "http://127.0.0.1:${HTTP[$1]}/metrics" | awk -v max="$MAX_STALENESS" '
        /^veto_feed_staleness_seconds\{/ { n++; if ($2 + 0 < max && $2 != "+Inf") ok++ }
        END { exit !(n == 3 && ok == 3) }'
}
t_wait=$(now_ms)
for r in "${REGIONS[@]}"; do
    until all_fresh "$r"; do
        (( $(now_ms) - t_wait < 30000 )) || { echo "$r: not every origin fresh after 30 s"; exit 1; }
        sleep 0.1
    done
done
echo "   every sidecar hears every origin ($(( $(now_ms) - t_wait )) ms after ready)"

code() { curl -s -o "$WORK/body" -w '%{http_code}' -H "authorization: Bearer $2" "http://127.0.0.1:${LISTEN[$1]}/orders/7"; }
reason() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d.get("reason") or d.get("user"))' "$WORK/body" 2>/dev/null || cat "$WORK/body"; }
# The sidecar's own measurement: sum of veto_revocation_propagation_seconds (all origins/paths).
lag_sum() { curl -s "http://127.0.0.1:${HTTP[$1]}/metrics" | awk '/^veto_revocation_propagation_seconds_sum/ {s+=$2} END {printf "%.6f", s+0}'; }
staleness() { curl -s "http://127.0.0.1:${HTTP[$1]}/metrics" | awk -v o="$2" '$0 ~ "^veto_feed_staleness_seconds\\{origin_region=\""o"\"" {print $2}'; }

echo
echo "1) alice's token in every region (through Envoy):"
for r in "${REGIONS[@]}"; do echo "   $r -> $(code "$r" "$T1") $(reason)"; done

declare -A BEFORE LAG REACHED
for r in "${REGIONS[@]}"; do BEFORE[$r]=$(lag_sum "$r"); done
echo
echo "2) revoke session sess-1 in us"
t0=$(now_ms)
# shellcheck disable=SC2046
"$VETO" revoke --session sess-1 --nats "$(url_of us)" --region us --reason demo $(login revoker) | sed 's/^/   /'
refused=0
while (( refused < ${#REGIONS[@]} )) && (( $(now_ms) - t0 < 5000 )); do
    for r in "${REGIONS[@]}"; do
        [ -n "${REACHED[$r]:-}" ] && continue
        if [ "$(code "$r" "$T1")" = 401 ]; then REACHED[$r]=$(( $(now_ms) - t0 )); refused=$((refused + 1)); fi
    done
done
for r in "${REGIONS[@]}"; do : "${REACHED[$r]:=not refused after 5 s}"; done
sleep 0.2
for r in "${REGIONS[@]}"; do
    LAG[$r]=$(python3 -c "print(f'{(float(\"$(lag_sum "$r")\") - float(\"${BEFORE[$r]}\")) * 1e6:.0f}')")
    echo "   $r -> $(code "$r" "$T1") $(reason)   lag measured by the sidecar: ${LAG[$r]} µs"
done

echo
echo "3) cut eu off (kill its hub); revoke bob's session sess-2 (homed in us) in us"
kill "${PID[eu-hub]}"; wait "${PID[eu-hub]}" 2>/dev/null || true; unset 'PID[eu-hub]'
cut=$(now_ms)
# shellcheck disable=SC2046
"$VETO" revoke --session sess-2 --nats "$(url_of us)" --region us --reason demo $(login revoker) | sed 's/^/   /'
sleep 0.3
for r in "${REGIONS[@]}"; do echo "   bob in $r -> $(code "$r" "$T2") $(reason)"; done
echo "   (eu cannot know: it keeps its local state until revocations from us are ${MAX_STALENESS}s stale)"
while [ "$(code us "$T_EU")" != 503 ]; do
    (( $(now_ms) - cut < 15000 )) || { echo "   us never saw eu as stale"; break; }
    sleep 0.2
done
echo "   after $(( $(now_ms) - cut )) ms, revocation.isolation = home (the default), on_stale = deny:"
for r in "${REGIONS[@]}"; do
    printf '   %-3s dave (home us) -> %s %-10s erin (home eu) -> %s %-10s bob -> %s %-10s /readyz %s\n' "$r" \
        "$(code "$r" "$T_US")" "$(reason)" "$(code "$r" "$T_EU")" "$(reason)" "$(code "$r" "$T2")" "$(reason)" \
        "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:${HTTP[$r]}/readyz")"
done
echo "   us and ap keep serving (and enforcing each other's revocations); only tokens homed in eu,"
echo "   whose revocations only eu could publish, are refused there. eu serves its own, refuses the rest."
echo "   eu staleness of origin us: $(staleness eu us) s; us staleness of origin eu: $(staleness us eu) s"

echo
echo "4) heal: restart eu's hub"
healed=$(now_ms)
start_hub eu
while [ "$(code eu "$T2")" != 401 ] || [ "$(code us "$T_EU")" != 200 ]; do
    (( $(now_ms) - healed < 20000 )) || { echo "   not converged in 20 s"; break; }
    sleep 0.05
done
CATCHUP=$(( $(now_ms) - healed ))
echo "   converged ${CATCHUP} ms after the hub restarted: bob in eu -> $(code eu "$T2") $(reason); erin in us -> $(code us "$T_EU") $(reason)"
echo "   alice in eu -> $(code eu "$T1") $(reason); a new session in eu -> $(code eu "$(mint carol sess-3 eu)") $(reason)"

echo
echo "5) the authority: log in in us, refresh in eu, call in ap, log out in ap"
json() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get(sys.argv[2], ""))' "$WORK/resp" "$1" 2>/dev/null; }
post_form() { curl -s -o "$WORK/resp" -w '%{http_code}' -H 'content-type: application/x-www-form-urlencoded' --data-urlencode "$2" ${3:+--data-urlencode "$3"} "http://127.0.0.1:${AUTH[$1]}$4"; }
st=$(curl -s -o "$WORK/resp" -w '%{http_code}' -H "authorization: Bearer $ADMIN" -H 'content-type: application/json' \
    -d '{"sub":"frank"}' "http://127.0.0.1:${AUTH[us]}/v1/sessions")
AT=$(json access_token); RT0=$(json refresh_token); SID=$(json session_id)
echo "   POST /v1/sessions in us -> $st (session $SID, home $(json home_region))"
echo "   frank in us -> $(code us "$AT") $(reason)"
st=$(post_form eu grant_type=refresh_token "refresh_token=$RT0" /v1/token)
AT=$(json access_token); RT1=$(json refresh_token)
echo "   POST /v1/token in eu (forwarded to the home, us) -> $st, a new refresh token: $([ "$RT1" != "$RT0" ] && echo yes || echo no)"
echo "   frank in ap with the refreshed token -> $(code ap "$AT") $(reason)"
t0=$(now_ms)
st=$(post_form ap "token=$RT1" "" /v1/logout)
echo "   POST /v1/logout in ap -> $st"
declare -A OUT
left=${#REGIONS[@]}
while (( left > 0 )) && (( $(now_ms) - t0 < 5000 )); do
    for r in "${REGIONS[@]}"; do
        [ -n "${OUT[$r]:-}" ] && continue
        if [ "$(code "$r" "$AT")" = 401 ]; then OUT[$r]=$(( $(now_ms) - t0 )); left=$((left - 1)); fi
    done
done
for r in "${REGIONS[@]}"; do
    st=$(post_form "$r" grant_type=refresh_token "refresh_token=$RT1" /v1/token)
    echo "   $r: frank's access token -> $(code "$r" "$AT") $(reason) after ${OUT[$r]:-more than 5000} ms; newest refresh token -> $st $(json error)"
done

echo
# Step 6 never fails the demo: it is skipped (saying why) or reported as not completed.
browser_skip=""
if ! command -v node >/dev/null; then browser_skip="no node (apt-get install nodejs)"
elif (( $(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0) < 18 )); then browser_skip="node >= 18 needed"
elif [ ! -d clients/web/node_modules/playwright-core ] && [ ! -d tests/web/node_modules/playwright-core ]; then
    browser_skip="playwright-core not installed (scripts/test-web.sh installs it)"
elif [ -z "${CHROMIUM_BIN:-}" ] && [ ! -x /usr/lib/chromium/chromium ] && [ ! -x /usr/bin/chromium ] && [ ! -x /usr/bin/chromium-browser ]; then
    browser_skip="no Chromium (apt-get install chromium)"
fi
BROWSER="not run"
if [ -n "$browser_skip" ]; then
    echo "6) skipped: $browser_skip"
    BROWSER="skipped"
else
    echo "6) a browser tab (headless Chromium) logged in through the us authority is logged out by a revocation made in eu"
    t6=$(now_ms)
    set +e
    timeout -k 2 20 node scripts/demo-browser.mjs --us "http://127.0.0.1:${AUTH[us]}" --eu "http://127.0.0.1:${AUTH[eu]}" \
        --admin-token-file "$WORK/admin.token" --port "$PAGE_PORT" >"$WORK/browser.out" 2>&1
    rc=$?
    set -e
    sed 's/^skipped: /   skipped: /' "$WORK/browser.out"
    case $rc in
        0) BROWSER="$(grep -o 'logged out [0-9-]* ms after revoked_at' "$WORK/browser.out" | grep -o '[0-9-]* ms' | paste -sd, - | sed 's/,/, /g' || true) after revoked_at" ;;
        3) BROWSER="skipped" ;;
        124|137) echo "   (step 6 timed out after 20 s; the demo goes on)"; BROWSER="timed out" ;;
        *) echo "   (step 6 did not complete, exit $rc; the demo goes on)"; BROWSER="did not complete" ;;
    esac
    echo "   step 6 took $(( $(now_ms) - t6 )) ms (Chromium start included)"
fi

echo
echo "== summary"
printf '   %-8s %-22s %-22s %-18s\n' region "sess-1 lag (sidecar)" "sess-1 refused (curl)" "after partition"
for r in "${REGIONS[@]}"; do
    after="refused"; [ "$r" = eu ] && after="caught up in ${CATCHUP} ms"
    printf '   %-8s %-22s %-22s %-18s\n' "$r" "${LAG[$r]} µs" "${REACHED[$r]} ms" "$after"
done
echo "   (curl times include starting curl and Envoy round trips; the sidecar lag is applied time - revoked_at)"
echo "   step 6, browser tabs on the us socket, revocation in eu: ${BROWSER}"
echo
echo "tearing down"
