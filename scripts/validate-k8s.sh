#!/usr/bin/env bash
# Validate every manifest under k8s/ offline.
#
# 1. kubernetes-validate --strict (schemas ship inside the package, no network) against the
#    oldest and newest Kubernetes versions we claim, rejecting unknown fields.
#    kubernetes-validate has no schemas for custom resources and has no flag to skip them: it
#    prints "WARN ... Couldn't find schema for kind X" and exits 0. That warning is also what a
#    typo in a core apiVersion produces (`app/v1`), so it is accepted here only for the
#    custom-resource kinds that step 2 checks (PodMonitor, PrometheusRule, ServiceEntry,
#    AuthorizationPolicy: `deploy_checks.py crd-kinds`), and fails the run for anything else.
# 2. scripts/deploy_checks.py k8s: those custom resources against strict schemas of the fields
#    we use, envoy.yaml ConfigMaps through `envoy --mode validate`, the PrometheusRule against
#    deploy/prometheus/alerts.yaml, and ports/names that must agree across the manifests.
#
# Usage: scripts/validate-k8s.sh                       validate
#        scripts/validate-k8s.sh --write-prometheusrule regenerate k8s/prometheusrule.yaml first
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
# shellcheck source=scripts/env.sh
source scripts/env.sh

PY="$VETO_VENV/bin/python"
KV="$VETO_VENV/bin/kubernetes-validate"
read -r -a K8S_VERSIONS <<<"${VETO_K8S_VERSIONS:-1.29.0 1.37.0}"

if [[ "${1:-}" == "--write-prometheusrule" ]]; then
    "$PY" scripts/deploy_checks.py write-prometheusrule
fi

mapfile -t files < <(find k8s -type f \( -name '*.yaml' -o -name '*.yml' \) | sort)
if ((${#files[@]} == 0)); then
    echo "validate-k8s: no manifests under k8s/" >&2
    exit 1
fi

kv_args=(--strict)
for v in "${K8S_VERSIONS[@]}"; do kv_args+=(-k "$v"); done

out="$(mktemp)"
trap 'rm -f "$out"' EXIT
rc=0
"$KV" "${kv_args[@]}" "${files[@]}" >"$out" 2>&1 || rc=$?

# "Couldn't find schema for kind <Kind> with api version <apiVersion> for ..." is fine only
# for the custom resources deploy_checks.py validates itself.
allowed="$("$PY" scripts/deploy_checks.py crd-kinds | awk '{printf "%skind %s with api version %s ", (NR>1?"|":""), $1, $2}')"
allowed_re="Couldn't find schema for (${allowed//./\\.})for kubernetes version"
grep -E '^(ERROR|FATAL|WARN) ' "$out" | grep -Ev "$allowed_re" >&2 || true
unexpected="$(grep '^WARN ' "$out" | grep -Evc "$allowed_re" || true)"
if ((unexpected > 0)); then
    echo "validate-k8s: kubernetes-validate had no schema for the resources above (typo in apiVersion or kind?)" >&2
    rc=1
fi
if grep -qE '^(ERROR|FATAL)' "$out"; then
    rc=1
fi
echo "kubernetes-validate --strict (k8s ${K8S_VERSIONS[*]}): $(grep -c '^INFO ' "$out" || true) resource checks passed," \
     "$(grep -Ec "$allowed_re" "$out" || true) custom-resource checks left to deploy_checks.py, rc=$rc"

"$PY" scripts/deploy_checks.py k8s "${files[@]}" || rc=1

if ((rc != 0)); then
    echo "validate-k8s: FAILED" >&2
fi
exit "$rc"
