#!/usr/bin/env bash
# Runs the cargo-fuzz targets of fuzz/ (libFuzzer, nightly), each on a seed corpus it writes
# itself (VETO_FUZZ_SEEDS: every target's init writes its seeds, signed with the fixed test
# keys of fuzz/keys/), and reports per target: executions, exec/s, coverage (cov, ft: the
# final libFuzzer stats) and findings (crash/timeout/oom artifacts). Exits 1 on any finding.
#
#   scripts/fuzz.sh [--minutes N] [--smoke SECONDS] [--jobs J] [TARGET...]
#
#   --minutes N    per target (default 5): the long campaign
#   --smoke S      per target, in seconds: what CI runs (scripts/test.sh), on the smoke build
#   --jobs J       targets run at once (default 1; at most the cores you can spare)
#
# Two builds. The campaign's (--minutes): release, debug assertions, overflow checks and
# ASan, as cargo-fuzz builds by default. The smoke's (--smoke): unoptimised with debug
# assertions and overflow checks, no ASan, no debuginfo (`cargo fuzz build --dev -s none`),
# because CI builds it cold: 2.3 min here, against 7.7 min for the ASan release build (an
# earlier session; 5.2 min without ASan at 16 codegen units, this one). It fuzzes about as
# fast: jws 2.4k exec/s on an idle box, where the ASan release build made 1.4k/s in the last
# campaign on a loaded one. What the smoke gives up is
# ASan's view of unsafe code in dependencies and optimiser-only paths; the campaign keeps them.
#
# Needs: rustup nightly and cargo-fuzz (scripts/install-deps.sh). Corpora grow in
# fuzz/corpus/<target>/, findings land in fuzz/artifacts/<target>/, logs in fuzz/logs/ (all
# gitignored). Reproduce a finding: fuzz/target/x86_64-unknown-linux-gnu/{release,debug}/<target> FILE
# (release: the campaign's build, debug: the smoke's)
set -euo pipefail
self="$(realpath "$0")"
cd "$(dirname "$0")/../fuzz"

ALL=(jws jwks revocation_events bearer refresh_token token_form logout_token)
secs=300
smoke=0
jobs=1
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) secs=$(( $2 * 60 )); smoke=0; shift 2 ;;
    --smoke) secs=$2; smoke=1; shift 2 ;;
    --jobs) jobs=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$self" | sed '$d'; exit 0 ;;
    -*) echo "unknown option $1" >&2; exit 64 ;;
    *) targets+=("$1"); shift ;;
  esac
done
[ ${#targets[@]} -gt 0 ] || targets=("${ALL[@]}")

t0=$(date +%s)
# one build of every target (they share the veto_fuzz lib): cheaper than one per target
if [ "$smoke" = 1 ]; then
  CARGO_PROFILE_DEV_DEBUG=0 cargo +nightly fuzz build --dev --sanitizer none
  bin=target/x86_64-unknown-linux-gnu/debug
  build="smoke (unoptimised, debug assertions, no ASan)"
else
  cargo +nightly fuzz build
  bin=target/x86_64-unknown-linux-gnu/release
  build="campaign (release, debug assertions, ASan)"
fi
echo "fuzz build, $build: $(( $(date +%s) - t0 )) s"
mkdir -p logs
# findings of this run only: artifacts left by an earlier run (kept to reproduce) do not count
started=logs/.started
touch "$started"

run_one() {
  local t=$1
  mkdir -p "corpus/$t" "artifacts/$t"
  VETO_FUZZ_SEEDS="corpus/$t" "$bin/$t" "corpus/$t" \
    -max_total_time="$secs" -rss_limit_mb=2048 -timeout=5 -print_final_stats=1 \
    -artifact_prefix="artifacts/$t/" >"logs/$t.log" 2>&1
}

pids=()
status=0
for t in "${targets[@]}"; do
  run_one "$t" &
  pids+=($!)
  if [ ${#pids[@]} -ge "$jobs" ]; then
    wait "${pids[0]}" || true
    pids=("${pids[@]:1}")
  fi
done
for p in "${pids[@]}"; do wait "$p" || true; done

printf '%-18s %12s %8s %6s %7s %8s\n' target execs exec/s cov ft findings
for t in "${targets[@]}"; do
  log="logs/$t.log"
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  found=$(find "artifacts/$t" -type f -newer "$started" | wc -l)
  if [ "$found" -gt 0 ] || grep -q 'ERROR: libFuzzer\|==ERROR\|panicked at' "$log" || [ -z "$execs" ]; then
    status=1
    [ "$found" -gt 0 ] || found="error"
  fi
  printf '%-18s %12s %8s %6s %7s %8s\n' "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "$found"
done
echo "total: $(( $(date +%s) - t0 )) s"
if [ "$status" -ne 0 ]; then
  echo "FINDINGS: see fuzz/artifacts/ and fuzz/logs/" >&2
  for t in "${targets[@]}"; do
    grep -m3 -A3 'panicked at\|==ERROR\|ERROR: libFuzzer' "logs/$t.log" >&2 || true
  done
fi
exit "$status"
