#!/usr/bin/env bash
# Runs benches/decision.rs (criterion) and prints, from this run only, the medians and the
# ratios the targets are about:
#   cold (first sight of a token) <= 1.15x a raw aws-lc-rs verify of the same token, per alg;
#   revoked-set lookup <= 50 ns at 1M entries; <= 64 B per revoked entry at 1M and 10M.
#
#   scripts/bench-decision.sh                 everything (~6 min on 2 cores, plus the build)
#   scripts/bench-decision.sh 'cold/ES256'    criterion arguments pass through (a filter here)
# Needs jq. Criterion's own output (with confidence intervals) is printed as it runs.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
command -v jq >/dev/null || { echo "bench-decision: jq is not installed" >&2; exit 1; }
CRITERION_DIR="${CARGO_TARGET_DIR:-$REPO/target}/criterion"

TMP="$(mktemp -d "${TMPDIR:-/tmp}/veto-bench.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT
touch "$TMP/started"

cargo bench --bench decision -- "$@" | tee "$TMP/out"

# full_id median_ns, for the benchmarks this run measured
find "$CRITERION_DIR" -path '*/new/estimates.json' -newer "$TMP/started" 2>/dev/null \
    | while read -r est; do
        printf '%s %s\n' "$(jq -r .full_id "$(dirname "$est")/benchmark.json")" \
            "$(jq -r .median.point_estimate "$est")"
    done | sort >"$TMP/medians"

echo
echo "==> summary of this run (criterion medians)"
grep -E '^(bytes_per_entry|grpc|paired):' "$TMP/out" | sed -E 's/^(bytes_per_entry|grpc|paired): /    /' || true
awk '
function fmt(ns) { return ns >= 1000 ? sprintf("%8.2f us", ns / 1000) : sprintf("%8.1f ns", ns) }
{ m[$1] = $2 }
END {
    n = split("ES256 ES384 RS256 PS256 EdDSA", algs, " ")
    head = 0
    for (i = 1; i <= n; i++) {
        a = algs[i]; u = m["cold/" a "/raw_unparsed"]; p = m["cold/" a "/raw_parsed"]
        v = m["cold/" a "/validate"]; d = m["cold/" a "/decide_miss"]
        if (u == "" || p == "" || v == "") continue
        if (!head++) {
            print "    cold path (target: validate <= 1.15x raw verify)"
            printf "    %-6s %11s %11s %11s %11s   %-16s %-16s %s\n", "alg", "raw_unparsed", "raw_parsed", "validate", "decide_miss", "validate/unparsed", "validate/parsed", "decide_miss/parsed"
        }
        printf "    %-6s %11s %11s %11s %11s   %6.3f %-10s %6.3f %-9s %6.3f\n", a, fmt(u), fmt(p), fmt(v),
            (d == "" ? "-" : fmt(d)), v / u, (v / u <= 1.15 ? "met" : "MISSED"), v / p,
            (v / p <= 1.15 ? "met" : "MISSED"), (d == "" ? 0 : d / p)
    }
    for (id in m) if (id ~ /^warm\//) warm[++w] = id
    if (w) {
        print "    warm path (repeat token, from the verified-token cache)"
        for (i = 1; i <= w; i++) for (j = i + 1; j <= w; j++) if (warm[j] < warm[i]) { t = warm[i]; warm[i] = warm[j]; warm[j] = t }
        for (i = 1; i <= w; i++) printf "    %-34s %s\n", warm[i], fmt(m[warm[i]])
    }
    for (id in m) if (id ~ /^grpc\//) gr[++q] = id
    if (q) {
        print "    in-process gRPC check (veto vs the do-nothing server)"
        for (i = 1; i <= q; i++) for (j = i + 1; j <= q; j++) if (gr[j] < gr[i]) { t = gr[i]; gr[i] = gr[j]; gr[j] = t }
        for (i = 1; i <= q; i++) printf "    %-34s %s\n", gr[i], fmt(m[gr[i]])
    }
    for (id in m) if (id ~ /^revoked_set/) rs[++r] = id
    if (r) {
        print "    revoked set lookups (target <= 50 ns)"
        for (i = 1; i <= r; i++) for (j = i + 1; j <= r; j++) if (rs[j] < rs[i]) { t = rs[i]; rs[i] = rs[j]; rs[j] = t }
        for (i = 1; i <= r; i++) printf "    %-34s %s  %s\n", rs[i], fmt(m[rs[i]]), (m[rs[i]] <= 50 ? "met" : sprintf("MISSED (%.1fx)", m[rs[i]] / 50))
    }
}' "$TMP/medians"
