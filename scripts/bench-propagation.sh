#!/usr/bin/env bash
# Runs the multi-region propagation benchmark (benches/propagation/: `cargo bench --bench
# propagation`, a harness = false binary in the release-based bench profile) and prints its
# results table. Everything it compares is measured in this one run, on 127.0.0.1, with real
# nats-server processes it starts and kills itself:
#   1. propagation lag p50/p99/max per origin -> region: fast-path sidecar vs a raw core-NATS
#      subscriber, durable-only sidecar vs a raw JetStream ordered consumer (targets: <= 1.5x
#      raw; p99 <= 1 ms fast path, <= 5 ms durable-only);
#   2. catch-up after a partition during which 100k revocations were published, every
#      direction, with and without the catch-up reader (target <= 2 s after heal);
#   3. replay of 1M events into a fresh sidecar: start -> ready (target <= 3 s) and its RSS;
#   4. start -> ready with 1M held: full replay vs [revocation.snapshot] + tail
#      (scripts/bench-snapshot.sh runs only this part).
#
#   scripts/bench-propagation.sh                      everything (~3-5 min on 2 cores, plus the build)
#   scripts/bench-propagation.sh --parts lag          only part 1 (also: partition, replay, snapshot;
#                                                     or BENCH_PARTS=lag)
# Sizes: BENCH_LAG_EVENTS (500/origin), BENCH_LAG_PACE_US (2000), BENCH_PARTITION_EVENTS
# (100000), BENCH_REPLAY_EVENTS (1000000), BENCH_INFLIGHT (1000 outstanding acks).
# Results are noisy on a shared machine: the load average is printed with them.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
# Only nats-server is needed here; env.sh also complains about Envoy/promtool if absent.
# shellcheck disable=SC1091
source scripts/env.sh 2>/dev/null || true
if [[ ! -x "${VETO_NATS_SERVER_BIN:-}" ]]; then
    echo "bench-propagation: nats-server not found (run scripts/install-deps.sh)" >&2
    exit 1
fi

cargo bench --bench propagation -- "$@"
