#!/usr/bin/env bash
# Single-region smoke test of the container image, run with podman: the in-proxy module copied
# out with `veto install-module` (what k8s/inproxy/'s init container runs); a real nats-server on a
# free loopback port, the image as the sidecar (read-only root, non-root, no capabilities),
# and allow -> revoke -> deny through the sidecar's forward-auth /check, then a clean stop
# (SIGTERM -> drain -> exit 0 within the grace). The CLI steps (keys, mint, provision,
# revoke) run from the image too. Every wait is bounded; everything is removed on exit.
#
#   scripts/test-image.sh [IMAGE]      (default localhost/veto:<Cargo.toml version>;
#                                       build it first: scripts/build-image.sh)
#
# podman on this machine cannot run containers with its defaults (crun, ulimits above the
# hard limits, cgroups v1): the runtime flags are probed (docs/container.md); override them
# with VETO_PODMAN_RUN_FLAGS="--runtime runc ...". Needs podman, runc, nats-server, curl.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
# shellcheck source=scripts/lib.sh
source scripts/lib.sh # free_port, wait_port, now_ms

version=$(awk -F'"' '/^\[package\]/{p=1; next} /^\[/{p=0} p && $1 ~ /^version *= */{print $2; exit}' Cargo.toml)
IMAGE="${1:-${VETO_IMAGE:-localhost/veto:$version}}"
NATS_BIN="${VETO_NATS_SERVER_BIN:-$(PATH="$PATH:/usr/sbin:/usr/local/sbin" command -v nats-server || true)}"
T0=$(now_ms)

WORK="$(mktemp -d)"
NAME="veto-smoke-$$"
NATS_PID=""
cleanup() {
    local rc=$?
    podman rm -f -t 0 "$NAME" >/dev/null 2>&1 || true
    if [[ -n $NATS_PID ]]; then kill "$NATS_PID" 2>/dev/null; wait "$NATS_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
    if ((rc == 0)); then
        echo "PASS: image smoke test ($IMAGE, $(($(now_ms) - T0)) ms)"
    else
        echo "FAIL: image smoke test ($IMAGE)" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
fail() {
    echo "test-image: $*" >&2
    if podman container exists "$NAME" 2>/dev/null; then
        echo "--- sidecar container log" >&2
        podman logs "$NAME" 2>&1 | tail -n 40 >&2 || true
    fi
    exit 1
}
step() { echo "== $*"; }

command -v podman >/dev/null || fail "podman not found (apt-get install podman buildah runc)"
[[ -x $NATS_BIN ]] || fail "nats-server not found (scripts/install-deps.sh)"
podman image exists "$IMAGE" || fail "no image $IMAGE (scripts/build-image.sh)"

# --- how podman can run a container here -------------------------------------------------
# podman's default ulimits (for root: nofile 1048576, nproc 4194304) exceed this machine's
# hard limits and the runtime lacks CAP_SYS_RESOURCE to raise them, so crun fails with
# "setrlimit `RLIMIT_NOFILE`: Operation not permitted"; with ulimits it may set, crun then
# fails with "cgroups in hybrid mode not supported, drop all controllers from cgroupv2"
# (cgroups v1 host); runc works. Candidates, the first that runs `IMAGE --version` wins
# (that is also the --version check): runc with nofile at the hard limit, runc with 1024,
# the default runtime with those, podman's defaults. nproc 1024 (per uid: the sidecar runs
# a few threads; runc here refuses more than 32768 even though the shell's hard limit is higher).
NOFILE=$(ulimit -Hn)
[[ $NOFILE == unlimited ]] && NOFILE=1048576
HIGH="--ulimit nofile=$NOFILE:$NOFILE --ulimit nproc=1024:1024"
LOW="--ulimit nofile=1024:1024 --ulimit nproc=1024:1024"
if [[ -n ${VETO_PODMAN_RUN_FLAGS+x} ]]; then
    candidates=("$VETO_PODMAN_RUN_FLAGS")
else
    candidates=()
    if PATH="$PATH:/usr/sbin" command -v runc >/dev/null; then
        candidates+=("--runtime runc $HIGH" "--runtime runc $LOW")
    fi
    candidates+=("$HIGH" "$LOW" "")
fi
step "podman run --rm $IMAGE --version (probing runtime flags)"
RUN=(); found=0
for c in "${candidates[@]}"; do
    read -ra flags <<<"$c"
    if out=$(timeout 60 podman run --rm "${flags[@]}" "$IMAGE" --version 2>"$WORK/probe.err") \
        && [[ $out == "veto $version" ]]; then
        RUN=("${flags[@]}"); found=1
        echo "   $out  (podman run flags: ${c:-<defaults>})"
        break
    fi
    echo "   (flags '${c:-<defaults>}': $(tr '\n' ' ' <"$WORK/probe.err")${out:+ printed: $out})"
done
((found)) || fail "podman cannot run $IMAGE with any of the flags above"

# The hardening every container of the test gets; --network host: the sidecar listens on
# free loopback ports and reaches nats-server on loopback, as it does next to Envoy in a pod.
HARDEN=(--network host --read-only --user 65532:65532 --cap-drop ALL --security-opt no-new-privileges)
veto() { timeout 60 podman run --rm "${RUN[@]}" "${HARDEN[@]}" -v "$WORK/keys:/keys" "$IMAGE" "$@"; }

step "image: FROM scratch, USER 65532, no shell"
user=$(podman image inspect --format '{{.Config.User}}' "$IMAGE")
[[ $user == 65532:65532 ]] || fail "image USER is '$user', want 65532:65532"
if timeout 60 podman run --rm "${RUN[@]}" --entrypoint /bin/sh "$IMAGE" -c true >/dev/null 2>&1; then
    fail "the image has a /bin/sh"
fi
echo "   user $user, /bin/sh absent, $(podman image inspect --format '{{.Size}}' "$IMAGE") bytes"

step "veto install-module: the in-proxy Envoy module out of the image (k8s/inproxy's init container)"
mkdir -p "$WORK/modules"
chown 65532:65532 "$WORK/modules" 2>/dev/null || chmod 0777 "$WORK/modules"
timeout 60 podman run --rm "${RUN[@]}" "${HARDEN[@]}" -v "$WORK/modules:/modules" "$IMAGE" \
    install-module --to /modules | sed 's/^/   /' || fail "install-module"
so="$WORK/modules/libvetoinproxy.so"
[[ -s $so && $(head -c 4 "$so" | od -An -c | tr -d ' ') == 177ELF ]] || fail "no ELF module at $so"
grep -q envoy_dynamic_module_on_program_init "$so" || fail "$so does not export the dynamic-module ABI"
[[ ! -e "$WORK/modules/.libvetoinproxy.so.tmp" ]] || fail "install-module left its temporary file"

NATS_PORT=$(free_port); GRPC=$(free_port); HTTP=$(free_port)
step "nats-server (JetStream, domain us) on 127.0.0.1:$NATS_PORT"
# the region is the JetStream domain, as in deploy/nats (veto nats provision addresses it so)
cat >"$WORK/nats.conf" <<CONF
listen: "127.0.0.1:$NATS_PORT"
jetstream { store_dir: "$WORK/js", domain: us }
CONF
"$NATS_BIN" -c "$WORK/nats.conf" >"$WORK/nats.log" 2>&1 &
NATS_PID=$!
wait_port "$NATS_PORT" || fail "nats-server did not listen: $(tail -n 5 "$WORK/nats.log")"
NATS="nats://127.0.0.1:$NATS_PORT"

step "signing key, JWKS, token, stream (veto keys / nats provision, from the image)"
mkdir -p "$WORK/keys" "$WORK/etc"
# the containers run as 65532: the key directory must be theirs (root here; rootless: 0777)
chown 65532:65532 "$WORK/keys" 2>/dev/null || chmod 0777 "$WORK/keys"
chmod 0755 "$WORK/etc"
veto keys generate --kid smoke-1 --out /keys/smoke-1.ES256.der >/dev/null || fail "keys generate"
veto keys jwks /keys/smoke-1.ES256.der >"$WORK/etc/jwks.json" || fail "keys jwks"
TOKEN=$(veto keys mint --key /keys/smoke-1.ES256.der --iss https://auth.smoke --sub alice --sid sess-smoke) \
    || fail "keys mint"
veto nats provision --nats "$NATS" --region us --regions us | sed 's/^/   /' || fail "nats provision"

DRAIN_MS=300; GRACE_MS=3000
cat >"$WORK/etc/veto.toml" <<TOML
[grpc]
listen = "127.0.0.1:$GRPC"
[http]
listen = "127.0.0.1:$HTTP"
[[issuers]]
issuer = "https://auth.smoke"
audiences = ["api"]
algorithms = ["ES256"]
jwks_file = "/etc/veto/jwks.json"
[nats]
url = "$NATS"
region = "us"
[shutdown]
drain = "${DRAIN_MS}ms"
grace = "${GRACE_MS}ms"
TOML
chmod 0644 "$WORK/etc/veto.toml" "$WORK/etc/jwks.json"
CONF=(-v "$WORK/etc:/etc/veto:ro")
timeout 60 podman run --rm "${RUN[@]}" "${HARDEN[@]}" "${CONF[@]}" "$IMAGE" check-config --config /etc/veto/veto.toml \
    || fail "check-config"

step "sidecar container $NAME (default CMD: sidecar --config /etc/veto/veto.toml; gRPC :$GRPC, HTTP :$HTTP)"
timeout 60 podman run -d --name "$NAME" "${RUN[@]}" "${HARDEN[@]}" "${CONF[@]}" "$IMAGE" >/dev/null \
    || fail "podman run -d"
ready=0
for _ in $(seq 1 300); do # 30 s
    if curl -fs -o /dev/null "http://127.0.0.1:$HTTP/readyz"; then ready=1; break; fi
    [[ $(podman inspect --format '{{.State.Running}}' "$NAME" 2>/dev/null) == true ]] || fail "the sidecar exited"
    sleep 0.1
done
((ready)) || fail "/readyz not 200 within 30 s: $(curl -s "http://127.0.0.1:$HTTP/readyz")"
echo "   /readyz: $(curl -s "http://127.0.0.1:$HTTP/readyz")"

check() { curl -s -o "$WORK/body" -w '%{http_code}' --max-time 5 "$@" "http://127.0.0.1:$HTTP/check"; }
step "allow: GET /check with the token"
code=$(check -H "authorization: Bearer $TOKEN")
[[ $code == 200 ]] || fail "valid token: HTTP $code $(cat "$WORK/body"), want 200"
echo "   HTTP $code"
code=$(check)
[[ $code == 401 ]] || fail "no token: HTTP $code, want 401"
echo "   (no token: HTTP $code)"

step "revoke: veto revoke --session sess-smoke (from the image)"
veto revoke --session sess-smoke --nats "$NATS" --region us --reason smoke | sed 's/^/   /' || fail "revoke"
start=$(now_ms)
while code=$(check -H "authorization: Bearer $TOKEN"); [[ $code != 401 ]]; do
    (($(now_ms) - start < 5000)) || fail "still HTTP $code 5 s after the revocation was acknowledged"
    sleep 0.01
done
step "deny: the same token -> HTTP $code, $(($(now_ms) - start)) ms after the CLI returned"

step "podman stop (SIGTERM): exit 0 within drain ${DRAIN_MS}ms + grace ${GRACE_MS}ms"
start=$(now_ms)
# podman sends SIGKILL after -t seconds; a SIGKILLed sidecar exits 137, which fails below
timeout 60 podman stop -t $((GRACE_MS / 1000 + 5)) "$NAME" >/dev/null || fail "podman stop"
took=$(($(now_ms) - start))
exit_code=$(podman inspect --format '{{.State.ExitCode}}' "$NAME")
[[ $exit_code == 0 ]] || fail "the sidecar exited $exit_code after SIGTERM, want 0"
# the grace bounds the sidecar's shutdown; 2 s more for podman and the runtime themselves
((took <= GRACE_MS + 2000)) || fail "podman stop took $took ms (grace $GRACE_MS ms)"
echo "   exited 0 in $took ms"
