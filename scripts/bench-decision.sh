#!/usr/bin/env bash
# Runs benches/decision.rs (criterion) and prints, from this run only, the medians and the
# ratios the targets are about:
#   cold (first sight of a token) <= 1.15x a raw aws-lc-rs verify of the same token, per alg;
#   revoked-set lookup <= 50 ns at 1M entries; <= 64 B per revoked entry at 1M and 10M.
#
#   scripts/bench-decision.sh                 everything (~6 min on 2 cores, plus the build)
#   scripts/bench-decision.sh 'cold/ES256'    criterion arguments pass through (a filter here)
#   scripts/bench-decision.sh --against REV 'revoked_set_1M'
#       the same benchmarks of git revision REV first (built in a worktree of its own, target
#       dir target/bench-against/), then of this tree, in one run; prints both medians and
#       this tree's over REV's: before and after a change, measured side by side
# Needs jq. Criterion's own output (with confidence intervals) is printed as it runs.
set -euo pipefail
AGAINST=""
if [ "${1:-}" = "--against" ]; then
    AGAINST="${2:?--against needs a git revision}"
    shift 2
fi

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
command -v jq >/dev/null || { echo "bench-decision: jq is not installed" >&2; exit 1; }
CRITERION_DIR="${CARGO_TARGET_DIR:-$REPO/target}/criterion"

TMP="$(mktemp -d "${TMPDIR:-/tmp}/veto-bench.XXXXXX")"
cleanup() {
    [ -z "$AGAINST" ] || git worktree remove --force "$TMP/against" 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

# full_id median_ns of the benchmarks under criterion dir $1 newer than file $2
medians() {
    find "$1" -path '*/new/estimates.json' -newer "$2" 2>/dev/null \
        | while read -r est; do
            printf '%s %s\n' "$(jq -r .full_id "$(dirname "$est")/benchmark.json")" \
                "$(jq -r .median.point_estimate "$est")"
        done | sort
}

if [ -n "$AGAINST" ]; then
    rev="$(git rev-parse --short "$AGAINST")"
    echo "==> $AGAINST ($rev) first, in its own worktree"
    git worktree add --detach "$TMP/against" "$rev" >/dev/null
    touch "$TMP/started-against"
    (cd "$TMP/against" && CARGO_TARGET_DIR="$REPO/target/bench-against" \
        cargo bench --bench decision -- "$@") | tee "$TMP/out-against"
    medians "$REPO/target/bench-against/criterion" "$TMP/started-against" >"$TMP/medians-against"
    echo "==> this tree"
fi

touch "$TMP/started"
cargo bench --bench decision -- "$@" | tee "$TMP/out"
medians "$CRITERION_DIR" "$TMP/started" >"$TMP/medians"

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

if [ -n "$AGAINST" ]; then
    echo
    echo "==> this tree against $AGAINST ($rev), one run (criterion medians)"
    grep -E '^bytes_per_entry:' "$TMP/out-against" | sed -E "s/^bytes_per_entry: /    $rev: /" || true
    grep -E '^bytes_per_entry:' "$TMP/out" | sed -E 's/^bytes_per_entry: /    now: /' || true
    join "$TMP/medians-against" "$TMP/medians" | awk -v rev="$rev" '
    function fmt(ns) { return ns >= 1000 ? sprintf("%8.2f us", ns / 1000) : sprintf("%8.1f ns", ns) }
    BEGIN { printf "    %-40s %11s %11s %8s\n", "benchmark", rev, "now", "now/" rev }
    { printf "    %-40s %11s %11s %7.2fx\n", $1, fmt($2), fmt($3), $3 / $2 }'
fi
