#!/usr/bin/env python3
"""Plots the CSVs scripts/curves.sh wrote (issue 13 §5) as PNGs in the same directory.

    scripts/plot_curves.py DIR      memory.csv -> memory.png, ready.csv -> ready.png, ...

Each CSV that exists is plotted; the others are skipped. Needs matplotlib (curves.sh installs
it into the venv when missing). Log x where the values span decades; a measurement and its
baseline from the same run share one plot.
"""

import csv
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

VETO = dict(color="tab:blue", marker="o")
BASE = dict(color="tab:gray", marker="s", linestyle="--")


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def num(v):
    return float(v) if v not in ("", None) else float("nan")


def col(rs, key):
    return [num(r[key]) for r in rs]


def human(x, _pos=None):
    for div, suffix in ((1e6, "M"), (1e3, "k")):
        if x >= div:
            return f"{x / div:.3g}{suffix}"
    return f"{x:g}"


def finish(fig, out, title):
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    print(f"wrote {out}")


def log_x(ax, xs, base=10):
    ax.set_xscale("log", base=base)
    ax.set_xticks(xs)
    ax.xaxis.set_major_formatter(FuncFormatter(human))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda *_: ""))
    ax.grid(True, which="major", alpha=0.3)


def memory(rs, out):
    n = col(rs, "entries")
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(n, col(rs, "bytes_per_entry_mixed"), label="80% session, 15% token, 5% subject", **VETO)
    a.plot(n, col(rs, "bytes_per_entry_sessions"), label="sessions only", color="tab:green", marker="^")
    a.set_ylabel("live heap bytes per entry")
    a.set_ylim(bottom=0)
    b.plot(n, col(rs, "hit_session_ns"), label="session hit (1 lookup)", **VETO)
    b.plot(n, col(rs, "miss_full_ns"), label="full miss (sid+jti+sub, 6 lookups)", color="tab:orange", marker="D")
    b.set_ylabel("RevokedSet::check, ns (criterion median)")
    b.set_ylim(bottom=0)
    for ax in (a, b):
        log_x(ax, n)
        ax.set_xlabel("revoked entries")
        ax.legend(fontsize=8)
    finish(fig, out, "revoked set: memory and check time vs entries (random keys over 64Ki ids)")


def ready(rs, out):
    n = col(rs, "entries")
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.plot(n, col(rs, "no_snapshot_s"), label="full replay (no snapshot)", **BASE)
    ax.plot(n, col(rs, "snapshot_s"), label="snapshot + 1% tail", **VETO)
    log_x(ax, n)
    ax.set_yscale("log")
    ax.set_xlabel("revocations in the stream")
    ax.set_ylabel("process spawn -> /readyz 200, s (best of the rounds)")
    ax.legend(fontsize=8)
    finish(fig, out, "sidecar start -> ready vs stream size")


def envoy(rs, out):
    c = col(rs, "connections")
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(c, col(rs, "noop_rps"), label="Envoy -> do-nothing ext_authz", **BASE)
    a.plot(c, col(rs, "veto_rps"), label="Envoy -> veto", **VETO)
    a.set_ylabel("requests/s (wrk, median of rounds)")
    a.set_ylim(bottom=0)
    b.plot(c, [v / 1000 for v in col(rs, "noop_p99_us")], label="Envoy -> do-nothing ext_authz", **BASE)
    b.plot(c, [v / 1000 for v in col(rs, "veto_p99_us")], label="Envoy -> veto", **VETO)
    b.set_ylabel("p99 latency, ms")
    b.set_yscale("log")
    for ax in (a, b):
        log_x(ax, c, base=2)
        ax.set_xlabel("concurrent connections")
        ax.legend(fontsize=8)
    finish(fig, out, "Envoy -> ext_authz: throughput and p99 vs connections (repeat token)")


def lag(rs, out):
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, mode, raw in zip(axes, ("fast", "durable"), ("raw core subscriber", "raw ordered consumer")):
        m = [r for r in rs if r["mode"] == mode]
        x = col(m, "achieved_per_s")
        ax.plot(x, col(m, "raw_p50_ms"), label=f"{raw} p50", color="tab:gray", marker="s", linestyle=":")
        ax.plot(x, col(m, "raw_p99_ms"), label=f"{raw} p99", **BASE)
        ax.plot(x, col(m, "veto_p50_ms"), label="veto p50", color="tab:blue", marker="o", linestyle=":")
        ax.plot(x, col(m, "veto_p99_ms"), label="veto p99", **VETO)
        log_x(ax, x)
        ax.set_yscale("log")
        ax.set_xlabel("revocations/s per origin (achieved)")
        ax.set_title("fast path" if mode == "fast" else "durable only (fast_path = false)", fontsize=10)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("cross-region lag, ms")
    finish(fig, out, "propagation lag vs publish rate (3 regions, every cross-region event pooled)")


def forged(rs, out):
    x = col(rs, "forged_target_per_s")
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4.2))
    a.plot(x, [v / 1000 for v in col(rs, "valid_p99_us")], label="valid token p99", **VETO)
    a.plot(x, [v / 1000 for v in col(rs, "valid_p50_us")], label="valid token p50", color="tab:blue", marker="o", linestyle=":")
    a.axhline(num(rs[0]["valid_p99_us"]) / 1000, color="tab:gray", linestyle="--", label="p99 without a flood")
    a.set_yscale("log")
    a.set_ylabel("valid-token latency, ms (open loop, 250 ms timeout)")
    # what was actually sent, and the valid checks lost to the timeout
    for i, (r, xv) in enumerate(zip(rs[1:], x[1:])):
        note = f"{num(r['forged_per_s']) / 1000:.1f}k/s sent"
        if num(r.get("forged_shed_pct")) >= 0.5:
            note += f" ({num(r['forged_shed_pct']):.0f}% shed)"
        if num(r.get("valid_lost_pct")) >= 0.5:
            note += f", {num(r['valid_lost_pct']):.0f}% of valid lost"
        a.annotate(note, (xv, num(r["valid_p99_us"]) / 1000), textcoords="offset points",
                   xytext=(-6, -16 - 14 * i), fontsize=7, ha="right")
    a.legend(fontsize=8, loc="upper left")
    b.plot(x, col(rs, "sidecar_cpu_cores"), label="sidecar CPU, cores", color="tab:red", marker="o")
    b.set_ylabel("sidecar CPU, cores")
    b.set_ylim(bottom=0)
    b.legend(fontsize=8, loc="upper left")
    for ax in (a, b):
        ax.set_xscale("symlog", linthresh=1000)
        ax.set_xticks(x)
        ax.xaxis.set_major_formatter(FuncFormatter(human))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda *_: ""))
        ax.grid(True, alpha=0.3)
        ax.set_xlabel("forged tokens/s offered")
    finish(fig, out, "valid-token latency and sidecar CPU under a forged-token flood (gRPC, no Envoy)")


PLOTS = {"memory": memory, "ready": ready, "envoy": envoy, "lag": lag, "forged": forged}


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(64)
    d = Path(sys.argv[1])
    done = 0
    for name, plot in PLOTS.items():
        src = d / f"{name}.csv"
        if src.exists():
            rs = rows(src)
            if rs:
                plot(rs, d / f"{name}.png")
                done += 1
    if not done:
        print(f"plot_curves: no CSV with rows in {d}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
