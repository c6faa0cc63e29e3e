#!/usr/bin/env bash
# The manual alternative to cert-manager for `veto inject`: a CA and a serving certificate for
# the webhook's Service, made with openssl, and the caBundle kube-apiserver needs to trust it.
#
#   scripts/inject-cert.sh [--namespace veto-inject] [--service veto-inject] [--out DIR]
#                          [--days 365] [--san DNS:name|IP:addr]... [--apply]
#
# Writes DIR/ca.crt, DIR/ca.key (kept and reused on later runs, so a renewed serving
# certificate keeps the same caBundle), DIR/tls.crt, DIR/tls.key (new on every run), prints
# the caBundle (base64 of ca.crt). With --apply it also creates/updates the Secret
# `veto-inject-tls` in the namespace and patches the caBundle into both webhooks of the
# MutatingWebhookConfiguration `veto-inject` (kubectl, current context).
#
# Keep DIR out of git: it holds private keys. `veto inject` re-reads the Secret's files every
# inject.reload_interval, so re-running this with --apply rotates the certificate without a
# restart.
set -euo pipefail

ns=veto-inject
svc=veto-inject
out=./veto-inject-certs
days=365
apply=false
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --namespace) ns=$2; shift 2 ;;
    --service) svc=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --days) days=$2; shift 2 ;;
    --san) extra+=("$2"); shift 2 ;;
    --apply) apply=true; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "inject-cert.sh: unknown argument $1" >&2; exit 64 ;;
  esac
done
command -v openssl >/dev/null || { echo "inject-cert.sh: openssl is required" >&2; exit 69; }

mkdir -p "$out"
chmod 700 "$out"
umask 077

if [ ! -s "$out/ca.key" ] || [ ! -s "$out/ca.crt" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$out/ca.key" -out "$out/ca.crt" -days "$((days * 3))" \
    -subj "/CN=veto-inject-ca" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
fi

sans="DNS:$svc,DNS:$svc.$ns,DNS:$svc.$ns.svc,DNS:$svc.$ns.svc.cluster.local"
for s in "${extra[@]+"${extra[@]}"}"; do sans="$sans,$s"; done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout "$tmp/tls.key" -out "$tmp/tls.csr" -subj "/CN=$svc.$ns.svc" 2>/dev/null
printf 'subjectAltName=%s\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' \
  "$sans" >"$tmp/ext.cnf"
openssl x509 -req -in "$tmp/tls.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" \
  -set_serial "0x$(openssl rand -hex 16)" -days "$days" -sha256 \
  -extfile "$tmp/ext.cnf" -out "$tmp/tls.crt" 2>/dev/null
# the pair lands together (each by rename), as a Secret volume update would
mv "$tmp/tls.key" "$out/tls.key.new" && mv "$out/tls.key.new" "$out/tls.key"
mv "$tmp/tls.crt" "$out/tls.crt.new" && mv "$out/tls.crt.new" "$out/tls.crt"

bundle=$(base64 <"$out/ca.crt" | tr -d '\n')
echo "wrote $out/tls.crt, $out/tls.key (SANs: $sans), CA $out/ca.crt" >&2
echo "caBundle: $bundle"

if $apply; then
  kubectl -n "$ns" create secret tls veto-inject-tls \
    --cert="$out/tls.crt" --key="$out/tls.key" --dry-run=client -o yaml | kubectl apply -f -
  kubectl patch mutatingwebhookconfiguration veto-inject --type=json -p "[
    {\"op\":\"add\",\"path\":\"/webhooks/0/clientConfig/caBundle\",\"value\":\"$bundle\"},
    {\"op\":\"add\",\"path\":\"/webhooks/1/clientConfig/caBundle\",\"value\":\"$bundle\"}]"
fi
