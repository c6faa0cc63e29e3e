#!/bin/sh
# Lays out the files of the veto runtime image (FROM scratch) in a directory:
#
#   deploy/container/rootfs.sh BINARY OUTDIR [MODULE]
#
#   /veto                                  the binary (stripped unless VETO_IMAGE_STRIP=0)
#   /usr/lib/veto/libvetoinproxy.so        MODULE, the in-proxy Envoy module (a glibc cdylib,
#                                          loaded by Envoy, never by veto), when given:
#                                          `veto install-module --to DIR` copies it out
#   /etc/passwd, /etc/group                root and veto (65532:65532), no login shell
#   /etc/ssl/certs/ca-certificates.crt     CA roots, for JWKS over https (reqwest's rustls
#                                          platform verifier probes this path)
#   + for a dynamically linked binary: exactly the shared libraries `ldd` lists, each at the
#     path ldd names (symlinks resolved), e.g. /lib64/ld-linux-x86-64.so.2,
#     /lib/x86_64-linux-gnu/libc.so.6; a static binary gets none.
#
# POSIX sh on purpose: the Containerfile's build stage runs it too (Debian's /bin/sh is dash).
# CA_BUNDLE overrides where the CA bundle is read from.
set -eu

[ $# -eq 2 ] || [ $# -eq 3 ] || { echo "usage: $0 BINARY OUTDIR [MODULE]" >&2; exit 64; }
bin=$1
out=$2
module=${3:-}
ca=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}

[ -x "$bin" ] || { echo "rootfs.sh: $bin is not an executable" >&2; exit 66; }
[ -r "$ca" ] || { echo "rootfs.sh: no CA bundle at $ca (Debian: apt-get install ca-certificates)" >&2; exit 66; }
[ ! -e "$out" ] || [ -z "$(ls -A "$out")" ] || { echo "rootfs.sh: $out is not empty" >&2; exit 73; }

umask 022
mkdir -p "$out/etc/ssl/certs"
cp "$bin" "$out/veto"
if [ "${VETO_IMAGE_STRIP:-1}" = 1 ]; then
    strip --strip-all "$out/veto"
fi
chmod 0755 "$out/veto"
if [ -n "$module" ]; then
    [ -f "$module" ] || { echo "rootfs.sh: $module is not a file" >&2; exit 66; }
    mkdir -p "$out/usr/lib/veto"
    cp "$module" "$out/usr/lib/veto/libvetoinproxy.so"
    if [ "${VETO_IMAGE_STRIP:-1}" = 1 ]; then
        # debug symbols only: Envoy binds the module's envoy_dynamic_module_* exports
        strip --strip-debug "$out/usr/lib/veto/libvetoinproxy.so"
    fi
    chmod 0644 "$out/usr/lib/veto/libvetoinproxy.so"
fi

cat >"$out/etc/passwd" <<'PASSWD'
root:x:0:0:root:/:/sbin/nologin
veto:x:65532:65532:veto:/nonexistent:/sbin/nologin
PASSWD
cat >"$out/etc/group" <<'GROUP'
root:x:0:
veto:x:65532:
GROUP
cp "$ca" "$out/etc/ssl/certs/ca-certificates.crt"
chmod 0644 "$out/etc/passwd" "$out/etc/group" "$out/etc/ssl/certs/ca-certificates.crt"

# Shared libraries: `ldd` prints "name => /path (addr)" for libraries and "/path (addr)"
# for the loader; linux-vdso has no file. A static binary prints "statically linked" (a
# static-pie, exit 0) or "not a dynamic executable" (exit 1): nothing to copy.
if file_out=$(ldd "$bin" 2>&1); then
    libs=$(printf '%s\n' "$file_out" | awk '/=>/ { if ($3 ~ /^\//) print $3; next } $1 ~ /^\// { print $1 }')
    for lib in $libs; do
        mkdir -p "$out$(dirname "$lib")"
        cp -L "$lib" "$out$lib"
        chmod 0755 "$out$lib"
    done
    if printf '%s\n' "$file_out" | grep -q 'not found'; then
        echo "rootfs.sh: ldd $bin: a library is missing:" >&2
        printf '%s\n' "$file_out" >&2
        exit 69
    fi
fi
