#!/usr/bin/env bash
# Runs the authority benchmark (benches/authority/: `cargo bench --bench authority`, a
# harness = false binary in the release-based bench profile, driving the bench-profile
# `veto authority` binary) and writes its results. Everything it compares is measured in this
# one run, on 127.0.0.1, with real nats-server and `veto authority` processes it starts and
# kills itself (2 regions: hub + JetStream leaf each, one authority per region):
#   1. refresh latency p50/p90/p99, sequential, local (at the home) and forwarded (at the
#      other region, over NATS request-reply), next to raw KV read+CAS, raw request-reply
#      (trivial and doing the read+CAS) and an HTTP GET of the JWKS (target <= 1.5x raw);
#   2. refresh throughput with 64 concurrent clients for 15 s: rotations per authority
#      CPU-second (target >= 2000; Keycloak budgets 120/s per vCPU);
#   3. authority VmRSS after 100k sessions vs right after ready (target <= 64 MiB).
#
#   scripts/bench-authority.sh                        everything (~2-3 min on 2 cores, plus the build)
#   scripts/bench-authority.sh --parts latency        only part 1 (also: throughput, rss;
#                                                     or BENCH_PARTS=latency)
# Sizes: BENCH_LAT_N (2000 per kind), BENCH_LAT_ROUNDS (10), BENCH_LAT_WARMUP (100),
# BENCH_TP_TASKS (64), BENCH_TP_SECS (15), BENCH_RSS_SESSIONS (100000), BENCH_RSS_CONC (64).
# Output: BENCH_OUT (default target/bench-authority/): results.md, latency.csv,
# latency_samples.csv, latency_cdf.svg, throughput.csv, rss.csv.
# Results are noisy on a shared machine: the load average is printed with them.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
# Only nats-server is needed here; env.sh also complains about Envoy/promtool if absent.
# shellcheck disable=SC1091
source scripts/env.sh 2>/dev/null || true
if [[ ! -x "${VETO_NATS_SERVER_BIN:-}" ]]; then
    echo "bench-authority: nats-server not found (run scripts/install-deps.sh)" >&2
    exit 1
fi
export BENCH_OUT="${BENCH_OUT:-$REPO/target/bench-authority}"
mkdir -p "$BENCH_OUT"

cargo bench --bench authority -- "$@"
echo
echo "bench-authority: results in $BENCH_OUT:"
ls -1 "$BENCH_OUT"
