#!/usr/bin/env bash
# Validate k8s/ offline, as rendered by kustomize (docs/kubernetes.md).
#
# Roots: every k8s/overlays/<region>, k8s/istio, k8s/inproxy (region us in the in-proxy mode),
# and k8s/inject once it exists (any other directory of k8s/ holding a kustomization.yaml
# outside k8s/base is built too). Each is rendered with `kubectl kustomize` (kubectl v1.32,
# kustomize v5.5). For each overlay (and k8s/inproxy, with us's), scripts/k8s-secrets.sh
# writes throwaway Secrets into a temp dir; they are appended to that overlay's render, so
# the checks see what `kubectl apply` would create.
#
# 1. kubernetes-validate --strict (schemas ship inside the package, no network) against the
#    Kubernetes versions we claim, VETO_K8S_VERSIONS (default 1.29.0 1.32.0 1.37.0: the oldest
#    supported, kubectl's, the newest schema shipped), rejecting unknown fields.
#    kubernetes-validate has no schemas for custom resources and has no flag to skip them: it
#    prints "WARN ... Couldn't find schema for kind X" and exits 0. That warning is also what a
#    typo in a core apiVersion produces (`app/v1`), so it is accepted here only for the
#    custom-resource kinds that step 2 checks (`deploy_checks.py crd-kinds`), and fails the
#    run for anything else.
# 2. scripts/deploy_checks.py k8s on each render: custom resources against strict schemas of
#    the fields we use, envoy.yaml ConfigMaps through `envoy --mode validate`, veto configs
#    through `veto check-config`, the PrometheusRule against deploy/prometheus/alerts.yaml,
#    and the ports, names, Services, ConfigMaps, Secrets and securityContexts that must agree.
#
# Usage: scripts/validate-k8s.sh                        validate
#        scripts/validate-k8s.sh --write-prometheusrule  regenerate the PrometheusRule first
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
# shellcheck source=scripts/env.sh
source scripts/env.sh

PY="$VETO_VENV/bin/python"
KV="$VETO_VENV/bin/kubernetes-validate"
read -r -a K8S_VERSIONS <<<"${VETO_K8S_VERSIONS:-1.29.0 1.32.0 1.37.0}"

KUBECTL="${KUBECTL:-$(command -v kubectl || true)}"
if [[ ! -x "$KUBECTL" ]]; then
    echo "validate-k8s: kubectl not found: it renders the kustomizations (kubectl kustomize)." >&2
    echo "  Install kubectl >= 1.27 (kustomize v5), e.g. the google-cloud-cli package or" >&2
    echo "  https://kubernetes.io/docs/tasks/tools/, or set KUBECTL=/path/to/kubectl." >&2
    exit 1
fi
if [[ ! -x "$KV" ]]; then
    echo "validate-k8s: $KV not found; run scripts/install-deps.sh" >&2
    exit 1
fi

if [[ "${1:-}" == "--write-prometheusrule" ]]; then
    "$PY" scripts/deploy_checks.py write-prometheusrule
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# Every kustomization root: overlays, istio, inject, ... (bases are built through overlays).
mapfile -t roots < <(find k8s -name kustomization.yaml -not -path 'k8s/base/*' -printf '%h\n' | sort)
if ((${#roots[@]} == 0)); then
    echo "validate-k8s: no kustomization under k8s/" >&2
    exit 1
fi
[[ -d k8s/inject ]] || echo "validate-k8s: k8s/inject does not exist yet; skipped"

rendered=()
rc=0
for root in "${roots[@]}"; do
    out="$tmp/$(echo "$root" | tr / _).yaml"
    if ! "$KUBECTL" kustomize "$root" >"$out" 2>"$tmp/err"; then
        cat "$tmp/err" >&2
        echo "validate-k8s: kubectl kustomize $root failed" >&2
        rc=1
        continue
    fi
    # a region overlay, or a variant of one (k8s/inproxy: the us overlay in in-proxy mode)
    region=""
    case "$root" in
        k8s/overlays/*) region="$(basename "$root")" ;;
        k8s/inproxy) region=us ;;
    esac
    if [[ -n "$region" ]]; then
        scripts/k8s-secrets.sh "$region" --out "$tmp/secrets" >/dev/null 2>"$tmp/err" \
            || { cat "$tmp/err" >&2; echo "validate-k8s: scripts/k8s-secrets.sh $region failed" >&2; rc=1; }
        [[ -f "$tmp/secrets/$region/secrets.yaml" ]] && cat "$tmp/secrets/$region/secrets.yaml" >>"$out"
    fi
    echo "kubectl kustomize $root: $(grep -c '^kind: ' "$out") resources"
    rendered+=("$out")
done
((${#rendered[@]} > 0)) || exit 1

kv_args=(--strict)
for v in "${K8S_VERSIONS[@]}"; do kv_args+=(-k "$v"); done

"$KV" "${kv_args[@]}" "${rendered[@]}" >"$tmp/kv" 2>&1 || rc=1

# "Couldn't find schema for kind <Kind> with api version <apiVersion> for ..." is fine only
# for the custom resources deploy_checks.py validates itself.
allowed="$("$PY" scripts/deploy_checks.py crd-kinds | awk '{printf "%skind %s with api version %s ", (NR>1?"|":""), $1, $2}')"
allowed_re="Couldn't find schema for (${allowed//./\\.})for kubernetes version"
grep -E '^(ERROR|FATAL|WARN) ' "$tmp/kv" | grep -Ev "$allowed_re" >&2 || true
unexpected="$(grep '^WARN ' "$tmp/kv" | grep -Evc "$allowed_re" || true)"
if ((unexpected > 0)); then
    echo "validate-k8s: kubernetes-validate had no schema for the resources above (typo in apiVersion or kind?)" >&2
    rc=1
fi
if grep -qE '^(ERROR|FATAL)' "$tmp/kv"; then
    rc=1
fi
echo "kubernetes-validate --strict (k8s ${K8S_VERSIONS[*]}): $(grep -c '^INFO ' "$tmp/kv" || true) resource checks passed," \
     "$(grep -Ec "$allowed_re" "$tmp/kv" || true) custom-resource checks left to deploy_checks.py"

"$PY" scripts/deploy_checks.py k8s "${rendered[@]}" || rc=1

if ((rc != 0)); then
    echo "validate-k8s: FAILED" >&2
fi
exit "$rc"
