#!/usr/bin/env python3
"""Draw the bench results as SVG charts (bench/charts/*.svg by default).

Each bench script saves its raw results next to its report once the report
is written (bench/data/*.jsonl, see bench/lib.sh `save_data`); this script
turns whichever of those files exist into charts, picking the same rounds
the reports pick, so a chart always shows the numbers of the report beside
it. A chart whose data file is missing is skipped (and an old copy of it
removed): never drawn from another run's data.

    .venv/bin/python bench/plot.py [--data DIR] [--out DIR]

The SVGs are deterministic (fixed hash salt, no date in their metadata):
drawing the same data twice gives the same bytes, so re-runs diff cleanly.
Needs matplotlib (`make setup-plot` installs it into .venv).
"""

import argparse
import json
import os
import statistics
import sys

import matplotlib

matplotlib.use("svg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

plt.rcParams.update({
    "svg.hashsalt": "sidekv-bench",  # stable ids inside the SVG
    "svg.fonttype": "path",
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "axes.grid.axis": "y",
    "grid.alpha": 0.3,
    "axes.axisbelow": True,
})

# One colour per system across every chart.
COLORS = {
    "sidekv": "#1f77b4", "native": "#ff7f0e", "minimal": "#2ca02c", "seed": "#9467bd",
    "denokv": "#8c564b", "pgbench": "#7f7f7f", "Redis Streams": "#d62728", "PostgreSQL SKIP LOCKED": "#7f7f7f",
}
FALLBACK = ["#17becf", "#bcbd22", "#e377c2", "#8c564b"]


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def save(fig, out, name):
    path = os.path.join(out, name)
    fig.savefig(path, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    print(f"  wrote {os.path.relpath(path)}")


def legend_below(fig, ax):
    """One legend for the figure, under the plots (never over a bar)."""
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=len(labels), fontsize=8, frameon=False)


def color(name, i):
    return COLORS.get(name, FALLBACK[i % len(FALLBACK)])


def grouped_bars(ax, groups, series, value, err=None, fmt="{:.0f}"):
    """Bars per group (x) and series (colour). value(series, group) -> number
    or None (no bar); err(series, group) -> (low, high) or None."""
    width = 0.8 / max(1, len(series))
    for i, s in enumerate(series):
        xs, ys, lo, hi = [], [], [], []
        for g, group in enumerate(groups):
            v = value(s, group)
            if v is None:
                continue
            xs.append(g - 0.4 + width * (i + 0.5))
            ys.append(v)
            e = err(s, group) if err else None
            lo.append(v - e[0] if e else 0)
            hi.append(e[1] - v if e else 0)
        bars = ax.bar(xs, ys, width, label=s, color=color(s, i),
                      yerr=[lo, hi] if err else None, capsize=2, error_kw={"elinewidth": 0.8})
        ax.bar_label(bars, [fmt.format(y) for y in ys], fontsize=6, padding=1, rotation=90)
    ax.set_xticks(range(len(groups)), groups)
    ax.margins(y=0.18)


# ------------------------------------------------------------ run.sh ----

RUN_TARGETS = ("sidekv", "native", "minimal", "seed")
RUN_WORKLOADS = ("GET", "GET auth", "POST", "MIX")


def median_run(runs):
    """The report's pick (bench.py median_run): the median req/s round, the lower middle one."""
    runs = sorted(runs, key=lambda r: r["rps"])
    return runs[(len(runs) - 1) // 2]


def plot_run(rows, out):
    runs = {}
    for r in rows:
        if r.get("kind") == "wrk":
            runs.setdefault((r["target"], r["workload"]), []).append(r)
    med = {k: median_run(v) for k, v in runs.items()}
    targets = [t for t in RUN_TARGETS if any(k[0] == t for k in runs)]
    wls = [w for w in RUN_WORKLOADS if any(k[1] == w for k in runs if k[0] in targets)]
    if not targets:
        return print("  run: no wrk results in the data; skipped")
    date = next((r["date"] for r in rows if r.get("kind") == "machine"), "")
    rounds = max(len(v) for v in runs.values())

    def pick(field, scale=1.0):
        return lambda t, w: med[(t, w)][field] * scale if (t, w) in med and med[(t, w)].get(field) is not None else None

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    grouped_bars(a, wls, targets, pick("rps"),
                 err=lambda t, w: (min(x["rps"] for x in runs[(t, w)]), max(x["rps"] for x in runs[(t, w)])) if (t, w) in runs else None)
    a.set_title("throughput (req/s, higher is better)")
    grouped_bars(b, wls, targets, pick("p99_us", 1e-3), fmt="{:.2f}")
    b.set_title("p99 latency (ms, lower is better)")
    legend_below(fig, a)
    fig.suptitle(f"bench/run.sh: wrk, 32 connections, 1000 keys × 100 B; median of {rounds} round(s), bars = range  ({date})", fontsize=9, y=1.02)
    save(fig, out, "run.svg")

    fig, ax = plt.subplots(figsize=(6, 3.4))
    grouped_bars(ax, wls, targets, pick("server_cpu_us_per_req"), fmt="{:.1f}")
    ax.set_title(f"server CPU per request (µs, lower is better; median round)  ({date})", fontsize=9)
    legend_below(fig, ax)
    save(fig, out, "run-cpu.svg")


# ---------------------------------------------------------- scale.sh ----

def short_n(n):
    for div, unit in ((1_000_000, "M"), (1_000, "k")):
        if n >= div:
            return f"{n / div:g}{unit}"
    return str(n)


def plot_scale(rows, out):
    by = {}
    for r in rows:
        if r.get("kind") == "wrk" and not r.get("warmup"):
            by.setdefault((r["workload"], r["size"]), []).append(r)
    if not by:
        return print("  scale: no wrk results in the data; skipped")
    date = next((r["date"] for r in rows if r.get("kind") == "machine"), "")
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.4))
    for i, wl in enumerate(w for w in ("GET", "POST", "LIST") if any(k[0] == w for k in by)):
        sizes = sorted(s for (w, s) in by if w == wl)
        # scale.py's report: the median-req/s round, p99 the median over the rounds.
        rps = [median_run(by[(wl, s)])["rps"] for s in sizes]
        p99 = [statistics.median(r["p99_us"] for r in by[(wl, s)]) / 1e3 for s in sizes]
        a.plot(sizes, rps, marker="o", label=wl, color=FALLBACK[i])
        b.plot(sizes, p99, marker="o", label=wl, color=FALLBACK[i])
    sizes = sorted({s for (_, s) in by})
    for ax, title in ((a, "req/s by number of keys"), (b, "p99 ms by number of keys")):
        ax.set_xscale("log")
        ax.set_xticks(sizes, [short_n(n) for n in sizes])
        ax.minorticks_off()
        ax.set_ylim(bottom=0)
        ax.set_title(title)
        ax.set_xlabel("keys in the database")
        ax.grid(True, axis="both", alpha=0.3)
    legend_below(fig, a)
    fig.suptitle(f"bench/scale.sh: sidekv, the same wrk load at each size  ({date})", fontsize=9, y=1.02)
    save(fig, out, "scale.svg")


# ------------------------------------------------------ kvconnect.sh ----

def plot_kvconnect(rows, out):
    by = {}
    for r in rows:
        by.setdefault((r["target"], r["mode"]), []).append(r)
    modes = [m for m in ("get", "set", "atomic") if any(k[1] == m for k in by)]
    targets = [t for t in ("sidekv", "denokv") if any(k[0] == t for k in by)]
    if not modes or not targets:
        return print("  kvconnect: no results in the data; skipped")

    def med(t, m):  # kvconnect.sh's report: sorted by ops/s, the upper middle one
        rs = sorted(by[(t, m)], key=lambda r: r["ops_per_s"])
        return rs[len(rs) // 2]

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    grouped_bars(a, modes, targets, lambda t, m: med(t, m)["ops_per_s"] if (t, m) in by else None,
                 err=lambda t, m: (min(r["ops_per_s"] for r in by[(t, m)]), max(r["ops_per_s"] for r in by[(t, m)])) if (t, m) in by else None)
    a.set_title("ops/s (higher is better)")
    grouped_bars(b, modes, targets, lambda t, m: med(t, m)["p99_ms"] if (t, m) in by else None, fmt="{:.1f}")
    b.set_title("p99 ms (lower is better)")
    legend_below(fig, a)
    fig.suptitle("bench/kvconnect.sh: KV Connect with Deno's own client, sidekv vs denokv; median round, bars = range", fontsize=9, y=1.02)
    save(fig, out, "kvconnect.svg")


# ------------------------------------------------------------- pg.sh ----

PG_ROWS = [  # (data label, chart label, system)
    ("pgbench-S", "pgbench select-only", "pgbench"),
    ("sidekv-pg-GET", "sidekv on PostgreSQL: GET", "sidekv"),
    ("sidekv-sqlite-GET", "sidekv on SQLite: GET", "sidekv"),
    ("two-GET", "2 sidekv, one PostgreSQL: GET", "sidekv"),
    ("pgbench-N", "pgbench simple-update", "pgbench"),
    ("sidekv-pg-POST", "sidekv on PostgreSQL: POST", "sidekv"),
    ("sidekv-sqlite-POST", "sidekv on SQLite: POST", "sidekv"),
    ("two-POST", "2 sidekv, one PostgreSQL: POST", "sidekv"),
]


def plot_pg(rows, out):
    by = {r["label"]: r for r in rows}
    shown = [(k, label, sysname) for k, label, sysname in PG_ROWS if k in by]
    if not shown:
        return print("  pg: no results in the data; skipped")
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 0.35 * len(shown) + 1.2), sharey=True)
    ys = list(range(len(shown)))[::-1]
    colors = [color(s, 0) for _, _, s in shown]
    # Two sidecars at once: req/s is their sum, p99 the worse of the two (pg.md lists both).
    for ax, vals, fmt, xlabel in (
        (a, [by[k]["rps"] for k, _, _ in shown], "{:.0f}", "req/s (pgbench: transactions/s); higher is better"),
        (b, [max(by[k]["p99_us"], default=0) / 1e3 for k, _, _ in shown], "{:.1f}", "p99 ms (the worse sidecar's for two); lower is better"),
    ):
        bars = ax.barh(ys, vals, color=colors)
        ax.bar_label(bars, [fmt.format(v) for v in vals], fontsize=7, padding=2)
        ax.set_xlabel(xlabel)
        ax.grid(True, axis="x", alpha=0.3)
        ax.grid(False, axis="y")
        ax.margins(x=0.15)
    a.set_yticks(ys, [label for _, label, _ in shown])
    fig.suptitle("bench/pg.sh: sidekv on PostgreSQL vs pgbench on the same server (32 clients)", fontsize=9, y=1.02)
    save(fig, out, "pg.svg")


# --------------------------------------------------------- queues.sh ----

def plot_queues(rows, out):
    if not rows:
        return print("  queues: no results in the data; skipped")
    by = {r["target"]: r for r in rows}
    targets = list(by)
    labels = [t.replace(" ", "\n", 1) for t in targets]  # "PostgreSQL SKIP LOCKED" fits under its bars
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.4))
    grouped_bars(a, targets, ["enqueued", "delivered"],
                 lambda s, t: by[t]["enqueue_per_s" if s == "enqueued" else "deliver_per_s"])
    a.set_title("messages/s (higher is better)")
    grouped_bars(b, targets, ["p50", "p99"], lambda s, t: by[t][f"lat_{s}_ms"], fmt="{:.1f}")
    b.set_yscale("log")
    b.set_title("enqueue → delivery latency, ms (log scale; lower is better)")
    for ax in (a, b):
        ax.set_xticks(range(len(targets)), labels, fontsize=7)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2, frameon=False)
    fig.suptitle("bench/queues.sh: durable queues, sidekv vs Redis Streams vs PostgreSQL SKIP LOCKED", fontsize=9, y=1.02)
    save(fig, out, "queues.svg")


# -------------------------------------------------------------- main ----

CHARTS = [  # (data file, plotter, charts it draws)
    ("run.jsonl", plot_run, ("run.svg", "run-cpu.svg")),
    ("scale.jsonl", plot_scale, ("scale.svg",)),
    ("kvconnect.jsonl", plot_kvconnect, ("kvconnect.svg",)),
    ("pg.jsonl", plot_pg, ("pg.svg",)),
    ("queues.jsonl", plot_queues, ("queues.svg",)),
]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=os.path.join(HERE, "data"), help="directory of the *.jsonl results (bench/data)")
    p.add_argument("--out", default=os.path.join(HERE, "charts"), help="directory for the SVGs (bench/charts)")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for data, plotter, charts in CHARTS:
        path = os.path.join(args.data, data)
        if not os.path.exists(path):
            print(f"  {data}: no such file in {args.data}; skipping {', '.join(charts)}")
            for c in charts:  # never leave a chart of another run beside this one's reports
                stale = os.path.join(args.out, c)
                if os.path.exists(stale):
                    os.remove(stale)
                    print(f"  removed {os.path.relpath(stale)} (its data is missing)")
            continue
        plotter(load(path), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
