#!/usr/bin/env bash
# Start -> ready of a fresh `veto sidecar` process with 1M revocations held: a full replay of
# the stream against the revoked set's local snapshot plus the stream's tail
# ([revocation.snapshot]), alternating in the same run on the same stream. It is part 4 of the
# propagation harness (benches/propagation/snapshot.rs: real nats-server, real sidecar
# processes, spawn -> /readyz 200), so it reuses that harness's publishing and process kit.
# Not a CI step.
#
#   scripts/bench-snapshot.sh                            1M revocations, 2 rounds (~2 min + the build)
#   BENCH_REPLAY_EVENTS=10000000 scripts/bench-snapshot.sh   10M (publishing alone takes minutes)
#   BENCH_SNAPSHOT_ROUNDS=3 scripts/bench-snapshot.sh     more rounds (the best of each is compared)
#   BENCH_SNAPSHOT_TAIL=10000                         revocations published after the snapshot (replayed)
#
# Also: `scripts/bench-propagation.sh --parts replay,snapshot` runs it next to the replay part.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
# shellcheck disable=SC1091
source scripts/env.sh 2>/dev/null || true
if [[ ! -x "${VETO_NATS_SERVER_BIN:-}" ]]; then
    echo "bench-snapshot: nats-server not found (run scripts/install-deps.sh)" >&2
    exit 1
fi

cargo bench --bench propagation -- --parts snapshot "$@"
