#!/usr/bin/env bash
# Curves (issue 13 §5): runs the existing benchmarks over a range of sizes, rates and
# connection counts, writes one CSV per curve to OUT, prints each as a table, and plots them
# (scripts/plot_curves.py, matplotlib) as PNGs next to the CSVs. Every point sits next to its
# baseline from the same run where there is one. Not a CI step.
#
#   memory  revoked-set bytes per entry and check time vs entries (benches/decision.rs, through
#           scripts/bench-decision.sh: groups revoked_set_10K/100K/1M/10M, session hit and
#           full miss)
#   ready   start -> ready of a fresh sidecar vs stream size, full replay (the baseline) and
#           [revocation.snapshot] + tail (part 4 of the propagation harness, scripts/bench-snapshot.sh)
#   envoy   Envoy -> veto throughput and p99 vs concurrent connections, next to Envoy -> the
#           do-nothing ext_authz server (scripts/bench-envoy.sh, once per connection count)
#   lag     cross-region propagation lag p50/p99 vs publish rate, fast path against a raw core
#           subscriber and durable-only against a raw ordered consumer (part 1 of the
#           propagation harness, once per rate)
#   forged  valid-token p50/p99 while unique forged tokens arrive at each rate, against no
#           flood, and the sidecar's CPU per forged token (scripts/bench-envoy.sh FORGED_RATES)
#
#   scripts/curves.sh                       everything at the default sizes (~12 min on 2 cores
#                                           on 2026-12-04, plus the builds)
#   CURVES=memory,ready scripts/curves.sh   some curves only
#   QUICK=1 scripts/curves.sh               a smoke run: small sizes, short runs
# Knobs (defaults in brackets):
#   CURVES [memory,ready,envoy,lag,forged]  OUT [docs/curves/<UTC date>]
#   SIZES ["10000 100000 1000000"; QUICK: "10000 100000"]: entries for memory and ready;
#     memory takes only 10000, 100000, 1000000, 10000000 (the decision bench's groups)
#   SIZES_LARGE [0]: 1 = add 10000000 (filling and replaying 10M takes ~10 min here)
#   CONNECTIONS ["1 4 16 64 256"] ENVOY_ROUNDS [2; QUICK 1] ENVOY_DURATION [5; QUICK 2] (s)
#   LAG_RATES ["100 1000 10000"] (revocations/s per origin) LAG_SECONDS [3; QUICK 1]
#     LAG_MAX_EVENTS [3000]: events per origin = rate x LAG_SECONDS, at least 100, at most
#     LAG_MAX_EVENTS (10k/s for 3 s per origin, 3 x 30000 events, stalled the harness's
#     publisher on the 2-core VM of 2026-12-04; 3 x 3000 at 10k/s ran)
#   FORGED_RATES ["1000 10000 50000"] VALID_RATE [1000] FORGED_DURATION [8; QUICK 3] (s)
#   SNAPSHOT_ROUNDS [2; QUICK 1]  NO_BUILD [0]: 1 = use the release binaries already built
#   PLOT [1]: 0 = CSVs and tables only. matplotlib is pip-installed into PLOT_VENV
#     [$VETO_VENV, else .venv] when it is missing there.
# A bad knob exits 64. Everything runs on 127.0.0.1, on free ports, through the benchmark
# scripts, which stop what they start.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2
    exit 64
}
bad() {
    echo "curves: $*" >&2
    exit 64
}
die() {
    echo "curves: $*" >&2
    exit 1
}
[[ $# -eq 0 ]] || usage

QUICK="${QUICK:-0}"
[[ "$QUICK" == 0 || "$QUICK" == 1 ]] || bad "QUICK must be 0 or 1, not '$QUICK'"
q() { if [[ "$QUICK" == 1 ]]; then echo "$2"; else echo "$1"; fi; }
CURVES="${CURVES-memory,ready,envoy,lag,forged}"
OUT="${OUT:-docs/curves/$(date -u +%F)}"
SIZES="${SIZES-$(q "10000 100000 1000000" "10000 100000")}"
SIZES_LARGE="${SIZES_LARGE:-0}"
CONNECTIONS="${CONNECTIONS-1 4 16 64 256}"
ENVOY_ROUNDS="${ENVOY_ROUNDS:-$(q 2 1)}"
ENVOY_DURATION="${ENVOY_DURATION:-$(q 5 2)}"
LAG_RATES="${LAG_RATES-100 1000 10000}"
LAG_SECONDS="${LAG_SECONDS:-$(q 3 1)}"
LAG_MAX_EVENTS="${LAG_MAX_EVENTS:-3000}"
FORGED_RATES="${FORGED_RATES-1000 10000 50000}"
VALID_RATE="${VALID_RATE:-1000}"
FORGED_DURATION="${FORGED_DURATION:-$(q 8 3)}"
SNAPSHOT_ROUNDS="${SNAPSHOT_ROUNDS:-$(q 2 1)}"
NO_BUILD="${NO_BUILD:-0}"
PLOT="${PLOT:-1}"

# --- knobs ---------------------------------------------------------------------------------
positive_list() { # name value
    local v
    [[ -n "$2" ]] || bad "$1 is empty"
    for v in $2; do
        [[ "$v" =~ ^[1-9][0-9]*$ ]] || bad "$1: '$v' is not a positive integer"
    done
}
declare -A WANT=()
IFS=',' read -r -a picked <<<"$CURVES"
for c in "${picked[@]}"; do
    case "$c" in
        memory | ready | envoy | lag | forged) WANT[$c]=1 ;;
        *) bad "CURVES: unknown curve '$c' (memory, ready, envoy, lag, forged)" ;;
    esac
done
((${#WANT[@]} > 0)) || bad "CURVES is empty"
for flag in SIZES_LARGE NO_BUILD PLOT; do
    [[ "${!flag}" == 0 || "${!flag}" == 1 ]] || bad "$flag must be 0 or 1, not '${!flag}'"
done
[[ "$SIZES_LARGE" == 0 ]] || [[ " $SIZES " == *" 10000000 "* ]] || SIZES="$SIZES 10000000"
for knob in SIZES CONNECTIONS LAG_RATES FORGED_RATES; do
    positive_list "$knob" "${!knob}"
done
for knob in ENVOY_ROUNDS ENVOY_DURATION LAG_SECONDS LAG_MAX_EVENTS VALID_RATE FORGED_DURATION SNAPSHOT_ROUNDS; do
    [[ "${!knob}" =~ ^[1-9][0-9]*$ ]] || bad "$knob must be a positive integer, not '${!knob}'"
done
if [[ -n "${WANT[memory]:-}" ]]; then
    for n in $SIZES; do
        case "$n" in
            10000 | 100000 | 1000000 | 10000000) ;;
            *) bad "SIZES: the memory curve has the decision bench's sizes only (10000 100000 1000000 10000000), not $n" ;;
        esac
    done
fi
for c in $CONNECTIONS; do
    ((c <= 10000)) || bad "CONNECTIONS: $c is more than 10000"
done

# shellcheck source=scripts/env.sh
source scripts/env.sh 2>/dev/null || true
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
TMP="$(mktemp -d "${TMPDIR:-/tmp}/veto-curves.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT
trap 'exit 130' INT TERM
LOG="$OUT/curves.log"
echo >>"$LOG"
echo "curves: $(date -u +%FT%TZ), $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg);" \
    "CURVES=$CURVES SIZES='$SIZES' QUICK=$QUICK; output in $OUT (runs logged to curves.log)" | tee -a "$LOG"

# label 10000 -> 10K, 1000000 -> 1M (the decision bench's group names)
label() { awk -v n="$1" 'BEGIN { if (n % 1000000 == 0) print n / 1000000 "M"; else if (n % 1000 == 0) print n / 1000 "K"; else print n }'; }
# prints CSV file $1 as a table
show() {
    echo
    echo "== $(basename "$1" .csv)"
    column -s, -t <"$1" | sed 's/^/   /'
}
# runs a benchmark command, its output appended to the log and kept in $TMP/run
run() {
    echo "--> $*" >>"$LOG"
    if ! "$@" >"$TMP/run" 2>&1; then
        cat "$TMP/run" >>"$LOG"
        tail -30 "$TMP/run" >&2
        die "failed: $* (see $LOG)"
    fi
    cat "$TMP/run" >>"$LOG"
}

if [[ "$NO_BUILD" != 1 ]]; then
    echo "==> building (release; benches decision and propagation)"
    cargo build --release --quiet --bin veto --example noop_authz --example soak_load
    [[ -z "${WANT[memory]:-}${WANT[ready]:-}${WANT[lag]:-}" ]] \
        || cargo bench --quiet --no-run --bench decision --bench propagation
fi

# --- memory: bytes per entry and check time vs entries --------------------------------------
if [[ -n "${WANT[memory]:-}" ]]; then
    labels=()
    for n in $SIZES; do labels+=("$(label "$n")"); done
    filter="^revoked_set_($(IFS='|'; echo "${labels[*]}"))/(hit_session|miss_full)\$"
    echo "==> memory: scripts/bench-decision.sh '$filter'"
    run scripts/bench-decision.sh "$filter"
    {
        echo "entries,bytes_per_entry_mixed,bytes_per_entry_sessions,hit_session_ns,miss_full_ns"
        for n in $SIZES; do
            awk -v l="$(label "$n")" -v n="$n" '
                function ns(v, unit) { return unit == "us" ? v * 1000 : v }
                /^==> summary/ { s = 1 }
                # "revoked_set 10K entries (80% session, ...): 27.5 B/entry live heap ..."
                s && $1 == "revoked_set" && $2 == l && match($0, /: [0-9.]+ B\/entry/) {
                    b = substr($0, RSTART + 2, RLENGTH - 10)
                    if (/sessions only/) sess = b; else mixed = b
                }
                s && $1 == "revoked_set_" l "/hit_session" { hit = ns($2, $3) }
                s && $1 == "revoked_set_" l "/miss_full" { miss = ns($2, $3) }
                END {
                    if (mixed == "" || hit == "" || miss == "") { print "memory: no result for " l > "/dev/stderr"; exit 1 }
                    printf "%d,%s,%s,%.1f,%.1f\n", n, mixed, sess, hit, miss
                }' "$TMP/run" || die "memory: could not read the results (see $LOG)"
        done
    } >"$OUT/memory.csv"
    show "$OUT/memory.csv"
fi

# --- ready: start -> ready vs stream size, full replay and snapshot -------------------------
if [[ -n "${WANT[ready]:-}" ]]; then
    echo "entries,tail,no_snapshot_s,snapshot_s" >"$OUT/ready.csv"
    for n in $SIZES; do
        tail=$((n / 100 > 100 ? n / 100 : 100))
        echo "==> ready: $n revocations held, tail $tail, $SNAPSHOT_ROUNDS round(s)"
        run env BENCH_REPLAY_EVENTS="$n" BENCH_SNAPSHOT_TAIL="$tail" \
            BENCH_SNAPSHOT_ROUNDS="$SNAPSHOT_ROUNDS" scripts/bench-snapshot.sh
        # "best of N: full replay F s, snapshot S s -> ..."
        awk -v n="$n" -v t="$tail" '
            /best of [0-9]+: full replay/ {
                for (i = 1; i <= NF; i++) { if ($i == "replay") f = $(i + 1); if ($i == "snapshot") s = $(i + 1) }
            }
            END { if (f == "" || s == "") exit 1; print n "," t "," f "," s }' "$TMP/run" >>"$OUT/ready.csv" \
            || die "ready: no 'best of' line for $n (see $LOG)"
    done
    show "$OUT/ready.csv"
fi

# --- envoy: throughput and p99 vs connections, veto and the do-nothing server ---------------
if [[ -n "${WANT[envoy]:-}" ]]; then
    echo "connections,veto_rps,noop_rps,veto_p50_us,noop_p50_us,veto_p99_us,noop_p99_us,veto_cpu_us_per_req,noop_cpu_us_per_req" \
        >"$OUT/envoy.csv"
    for c in $CONNECTIONS; do
        threads=$((c < 2 ? c : 2))
        echo "==> envoy: $c connection(s), wrk -t$threads, $ENVOY_ROUNDS x ${ENVOY_DURATION}s per side"
        run env NO_BUILD=1 CONNECTIONS="$c" THREADS="$threads" ROUNDS="$ENVOY_ROUNDS" \
            DURATION="$ENVOY_DURATION" WARMUP=1 scripts/bench-envoy.sh
        # the summary's medians: side req/s p50_us p99_us authz_cpu_us/req envoy_cpu_us/req
        awk -v c="$c" '
            /^==> summary/ { s = 1; next }
            s && ($1 == "veto" || $1 == "noop") && NF == 6 { rps[$1] = $2; p50[$1] = $3; p99[$1] = $4; cpu[$1] = $5 }
            END {
                if (rps["veto"] == "" || rps["noop"] == "") exit 1
                print c "," rps["veto"] "," rps["noop"] "," p50["veto"] "," p50["noop"] "," p99["veto"] "," p99["noop"] "," cpu["veto"] "," cpu["noop"]
            }' "$TMP/run" >>"$OUT/envoy.csv" || die "envoy: no summary for $c connections (see $LOG)"
    done
    show "$OUT/envoy.csv"
fi

# --- lag: propagation lag vs publish rate, fast path and durable ----------------------------
if [[ -n "${WANT[lag]:-}" ]]; then
    echo "target_per_s,mode,achieved_per_s,expected,received,raw_p50_ms,raw_p99_ms,veto_p50_ms,veto_p99_ms,veto_max_ms" \
        >"$OUT/lag.csv"
    for rate in $LAG_RATES; do
        events=$((rate * LAG_SECONDS > 100 ? rate * LAG_SECONDS : 100))
        events=$((events < LAG_MAX_EVENTS ? events : LAG_MAX_EVENTS))
        pace=$((1000000 / rate))
        ((pace > 0)) || bad "LAG_RATES: $rate/s is more than one event per microsecond"
        echo "==> lag: $rate/s per origin ($events events from each of 3 regions, one every ${pace} us)"
        run env BENCH_LAG_EVENTS="$events" BENCH_LAG_PACE_US="$pace" scripts/bench-propagation.sh --parts lag
        # "curve: lag mode=fast target_per_s=.. achieved_per_s=.. expected=.. n=.. raw_p50_ms=.. ..."
        # (printed as the part ends and again in the final report: the first of each mode)
        awk '
            /^curve: lag / && !seen[$3]++ {
                for (i = 3; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
                print v["target_per_s"] "," v["mode"] "," v["achieved_per_s"] "," v["expected"] "," v["n"] "," \
                    v["raw_p50_ms"] "," v["raw_p99_ms"] "," v["veto_p50_ms"] "," v["veto_p99_ms"] "," v["veto_max_ms"]
                found++
            }
            END { exit found == 2 ? 0 : 1 }' "$TMP/run" >>"$OUT/lag.csv" \
            || die "lag: no curve lines for $rate/s (see $LOG)"
    done
    show "$OUT/lag.csv"
fi

# --- forged: valid-token latency under a flood of forged tokens ------------------------------
if [[ -n "${WANT[forged]:-}" ]]; then
    echo "==> forged: valid probe $VALID_RATE/s, forged 0 (baseline) $FORGED_RATES /s, ${FORGED_DURATION}s each"
    run env NO_BUILD=1 FORGED_RATES="$FORGED_RATES" VALID_RATE="$VALID_RATE" \
        FORGED_DURATION="$FORGED_DURATION" WARMUP=2 scripts/bench-envoy.sh
    # Per rate: the sidecar's CPU beyond what the valid probe alone costs (the 0 row, scaled by
    # the valid checks answered), per forged token verified (answered bad_signature: the
    # ones shed unverified by the verify pool cost far less, and are charged to these); its
    # inverse is what one core absorbs.
    awk '
        /^FORGED / {
            delete v
            for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
            r = ++rows
            for (k in v) row[r, k] = v[k]
        }
        END {
            if (rows < 2 || row[1, "forged_target_per_s"] != 0) exit 1
            print "forged_target_per_s,forged_per_s,forged_skipped,forged_shed_pct,forged_errors,valid_per_s,valid_errors,valid_lost_pct,valid_p50_us,valid_p99_us,valid_max_us,forged_p99_us,sidecar_cpu_cores,cpu_us_per_forged,forged_per_core_s"
            base = row[1, "sidecar_cpu_s"] / (row[1, "valid_sent"] > 0 ? row[1, "valid_sent"] : 1)
            for (r = 1; r <= rows; r++) {
                f = row[r, "forged_sent"] - row[r, "forged_shed"]
                extra = row[r, "sidecar_cpu_s"] - base * row[r, "valid_sent"]
                per = f > 0 ? extra / f * 1e6 : 0
                printf "%d,%d,%d,%.1f,%d,%d,%d,%.1f,%d,%d,%d,%d,%.2f,%s,%s\n", row[r, "forged_target_per_s"], row[r, "forged_per_s"],
                    row[r, "forged_skipped"], 100 * row[r, "forged_shed"] / (row[r, "forged_sent"] > 0 ? row[r, "forged_sent"] : 1), row[r, "forged_errors"], row[r, "valid_per_s"], row[r, "valid_errors"],
                    100 * row[r, "valid_errors"] / (row[r, "valid_sent"] > 0 ? row[r, "valid_sent"] : 1), row[r, "valid_p50_us"], row[r, "valid_p99_us"], row[r, "valid_max_us"], row[r, "forged_p99_us"],
                    row[r, "sidecar_cpu_s"] / row[r, "wall_s"], (f > 0 ? sprintf("%.1f", per) : ""),
                    (f > 0 && per > 0 ? sprintf("%.0f", 1e6 / per) : "")
            }
        }' "$TMP/run" >"$OUT/forged.csv" || die "forged: no FORGED lines (see $LOG)"
    show "$OUT/forged.csv"
fi

# --- plots ----------------------------------------------------------------------------------
if [[ "$PLOT" == 1 ]]; then
    venv="${PLOT_VENV:-${VETO_VENV:-$REPO/.venv}}"
    [[ -x "$venv/bin/python" ]] || python3 -m venv "$venv" || die "cannot create a venv at $venv"
    if ! "$venv/bin/python" -c 'import matplotlib' 2>/dev/null; then
        echo "==> pip install matplotlib into $venv"
        "$venv/bin/python" -m pip install --quiet 'matplotlib>=3,<4' || die "pip install matplotlib failed"
    fi
    echo
    "$venv/bin/python" scripts/plot_curves.py "$OUT"
fi
echo "curves: done $(date -u +%FT%TZ); load average $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$LOG"
