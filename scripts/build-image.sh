#!/usr/bin/env bash
# Builds the veto container image here, with no registry: the release binary is built on the
# host, deploy/container/rootfs.sh lays out the image's files, and podman builds the
# Containerfile's FROM scratch `runtime` stage from them (docs/container.md).
#
#   scripts/build-image.sh [--libc musl|gnu]
#
#   --libc musl   (default) static binary, target x86_64-unknown-linux-musl: needs Debian's
#                 musl-tools (musl-gcc) and the rustup target (added here if missing)
#   --libc gnu    the host's glibc build, plus exactly the shared libraries ldd lists
#
# Env: VETO_IMAGE (default localhost/veto:<Cargo.toml version>), VETO_IMAGE_STRIP=0 keeps
# the symbols. Prints the image and binary sizes and the build times; the image id is left in
# target/veto-image.iid (CARGO_TARGET_DIR is honoured). Replacing an image of the same tag
# removes the old one (disk).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

libc=musl
while (($#)); do
    case "$1" in
        --libc) libc="${2:-}"; shift 2 ;;
        --libc=*) libc="${1#--libc=}"; shift ;;
        *) echo "usage: $0 [--libc musl|gnu]" >&2; exit 64 ;;
    esac
done
# gnu builds for the host (no --target), so it shares target/release with `cargo build --release`
tdir="${CARGO_TARGET_DIR:-target}"
case "$libc" in
    musl) triple=x86_64-unknown-linux-musl; target_args=(--target "$triple"); bin="$tdir/$triple/release/veto" ;;
    gnu) triple=host; target_args=(); bin="$tdir/release/veto" ;;
    *) echo "build-image: --libc musl or gnu, not '$libc'" >&2; exit 64 ;;
esac

log() { printf 'build-image: %s\n' "$*" >&2; }
for tool in podman cargo strip; do
    command -v "$tool" >/dev/null || { log "$tool not found (apt-get install podman buildah runc; binutils)"; exit 69; }
done
if [[ $libc == musl ]]; then
    command -v musl-gcc >/dev/null || { log "musl-gcc not found: apt-get install musl-tools (or --libc gnu)"; exit 69; }
    command -v rustup >/dev/null || { log "rustup not found: the $triple std comes from rustup (or --libc gnu)"; exit 69; }
    if ! rustup target list --installed 2>/dev/null | grep -qx "$triple"; then
        log "rustup target add $triple"
        rustup target add "$triple"
    fi
fi

version=$(awk -F'"' '/^\[package\]/{p=1; next} /^\[/{p=0} p && $1 ~ /^version *= */{print $2; exit}' Cargo.toml)
[[ -n $version ]] || { log "no [package] version in Cargo.toml"; exit 1; }
IMAGE="${VETO_IMAGE:-localhost/veto:$version}"
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD -- 2>/dev/null || revision="$revision-dirty"
epoch=$(git log -1 --format=%ct 2>/dev/null || date +%s)
created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)

log "cargo build --release --locked ${target_args[*]} --bin veto"
t0=$SECONDS
cargo build --release --locked "${target_args[@]}" --bin veto
# the in-proxy Envoy module: for the host's glibc (Envoy dlopens it), whatever --libc says
log "cargo build --release --locked -p veto-envoy-module --lib"
cargo build --release --locked -p veto-envoy-module --lib
module="$tdir/release/libvetoinproxy.so"
cargo_s=$((SECONDS - t0))
# (ldd says "statically linked" for a static-pie, and lists "=> path" lines for a dynamic one)
if [[ $libc == musl ]] && ldd "$bin" 2>&1 | grep -q '=>'; then
    log "$bin is dynamically linked; expected a static binary"
    exit 1
fi

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
mkdir "$stage/rootfs" "$stage/context"
deploy/container/rootfs.sh "$bin" "$stage/rootfs" "$module"
log "image files:"
(cd "$stage/rootfs" && find . -type f -printf '  %M %10s /%P\n' | sort -k3)

old_id=$(podman image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
log "podman build $IMAGE (FROM scratch, runtime stage)"
t1=$SECONDS
# The context directory is empty: the runtime stage copies only from the rootfs context.
# --timestamp: the created time and file times are the commit's, so the same binary gives
# the same image id. --layers=false: no intermediate image per instruction (nothing to cache).
podman build --quiet --layers=false \
    --target runtime \
    --build-context "rootfs=$stage/rootfs" \
    --build-arg "VERSION=$version" \
    --build-arg "REVISION=$revision" \
    --build-arg "CREATED=$created" \
    --timestamp "$epoch" \
    --iidfile "$tdir/veto-image.iid" \
    -t "$IMAGE" \
    -f Containerfile "$stage/context" >/dev/null
podman_s=$((SECONDS - t1))
new_id=$(cat "$tdir/veto-image.iid")
new_id=${new_id#sha256:}
if [[ -n $old_id && $old_id != "$new_id" ]]; then
    podman rmi "$old_id" >/dev/null 2>&1 || log "old image $old_id still in use; not removed"
fi

size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
bin_size=$(stat -c %s "$bin")
stripped_size=$(stat -c %s "$stage/rootfs/veto")
echo "image:  $IMAGE (${new_id:0:12})"
echo "image size:  $size bytes ($(awk -v b="$size" 'BEGIN { printf "%.1f", b / 1048576 }') MiB)"
echo "binary size: $stripped_size bytes in the image (stripped); $bin_size bytes $bin"
echo "build time:  cargo ${cargo_s}s, podman build ${podman_s}s"
