"""The study's PNG plots, drawn from its JSON with matplotlib (the optional ``bench`` extra)."""

from __future__ import annotations

from pathlib import Path

from popek.vmm.bench.report import compare

COLORS = {"bare": "#444444", "full": "#8c564b", "trap": "#d62728", "rewrite": "#1f77b4", "hybrid": "#9467bd",
          "pv": "#2ca02c", "pv-noassist": "#98df8a"}  # fmt: skip


def _plt():  # the pyplot module, imported late: matplotlib is optional
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a build machine
    import matplotlib.pyplot as plt

    return plt


def _monitors(rows: list[dict]) -> list[str]:
    seen: list[str] = []
    for r in rows:
        if r["monitor"] not in seen:
            seen.append(r["monitor"])
    return seen


def _grouped(ax, groups: list[str], monitors: list[str], value, spread=None) -> None:
    """Bars per group, one per monitor; ``value(g, m)`` -> number or None, ``spread`` -> (low, high)."""
    width = 0.8 / max(1, len(monitors))
    for i, m in enumerate(monitors):
        xs, ys, lo, hi = [], [], [], []
        for j, g in enumerate(groups):
            v = value(g, m)
            if v is None or v <= 0:
                continue
            xs.append(j + (i - (len(monitors) - 1) / 2) * width)
            ys.append(v)
            if spread:
                low, high = spread(g, m)
                lo.append(max(0.0, v - low))
                hi.append(max(0.0, high - v))
        ax.bar(xs, ys, width, label=m, color=COLORS.get(m), yerr=[lo, hi] if spread else None, capsize=2)
    ax.set_xticks(range(len(groups)), groups, rotation=20)
    ax.set_yscale("log")
    ax.grid(axis="y", alpha=0.3)


def slowdown(data: dict, path: Path) -> None:
    """Grouped bars of slowdown against bare per workload and monitor, log scale."""
    plt = _plt()
    rows = {(r["workload"], r["monitor"]): r for r in data["macro"]}
    workloads = list(dict.fromkeys(r["workload"] for r in data["macro"]))
    monitors = [m for m in _monitors(data["macro"]) if m != "bare"]
    fig, ax = plt.subplots(figsize=(11, 5))
    _grouped(ax, workloads, monitors, lambda g, m: rows[(g, m)]["slowdown"]["median"] if (g, m) in rows else None,
             lambda g, m: (rows[(g, m)]["slowdown"]["min"], rows[(g, m)]["slowdown"]["max"]))  # fmt: skip
    ax.axhline(1, color="black", lw=0.8)
    ax.set_ylabel("time per unit of work / bare machine's")
    ax.set_title("Slowdown against the bare machine")
    ax.legend(ncol=len(monitors))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def nano(data: dict, path: Path) -> None:
    """Grouped bars of one operation's cost in bare-machine instructions, per operation and monitor."""
    plt = _plt()
    rows = [r for r in data["nano"] if r["profile"] == "classic"] or data["nano"]
    per = data["bare_ns_per_instruction"]["median"]
    by = {(r["name"], r["monitor"]): r for r in rows}
    ops = list(dict.fromkeys(r["name"] for r in rows))
    fig, ax = plt.subplots(figsize=(11, 5))
    _grouped(ax, ops, _monitors(rows), lambda g, m: by[(g, m)]["ns_per_op"]["median"] / per if (g, m) in by else None)
    ax.set_ylabel("guest instructions' worth of time per operation")
    ax.set_title(f"Nanobenchmarks ({rows[0]['profile'] if rows else ''}): one operation, (with − without) / ops")
    ax.legend(ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def exits(data: dict, path: Path) -> None:
    """Stacked bars: exits per 1,000 instructions by cause, one panel per monitor, one bar per workload."""
    plt = _plt()
    monitors = [m for m in _monitors(data["macro"]) if m != "full"]
    workloads = list(dict.fromkeys(r["workload"] for r in data["macro"]))
    causes = sorted({c for r in data["macro"] for c in r["exits_by_cause"]})
    cmap = plt.get_cmap("tab20")
    fig, axes = plt.subplots(1, len(monitors), figsize=(3.2 * len(monitors), 4.5), sharey=True, squeeze=False)
    by = {(r["workload"], r["monitor"]): r for r in data["macro"]}
    for ax, m in zip(axes[0], monitors, strict=True):
        bottom = [0.0] * len(workloads)
        for k, c in enumerate(causes):
            vals = []
            for w in workloads:
                r = by.get((w, m))
                steps = 0 if r is None else r["steps_per_unit"] * r["size"]  # the run the counts come from
                vals.append(0.0 if r is None else 1000 * r["exits_by_cause"].get(c, 0) / max(1, steps))
            ax.bar(range(len(workloads)), vals, bottom=bottom, color=cmap(k % 20), label=c)
            bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
        ax.set_title(m)
        ax.set_xticks(range(len(workloads)), workloads, rotation=60, fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("exits per 1,000 guest instructions")
    handles, labels = axes[0][-1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", fontsize=8)
    fig.suptitle("Exits by cause")
    fig.tight_layout(rect=(0, 0, 0.9, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def scatter(data: dict, path: Path) -> None:
    """Exits per 1,000 instructions against slowdown, one point per workload and monitor."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 5))
    for m in _monitors(data["macro"]):
        pts = [(r["exits_per_1000"], r["slowdown"]["median"]) for r in data["macro"]
               if r["monitor"] == m and r["exits_per_1000"] is not None]  # fmt: skip
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], label=m, color=COLORS.get(m), s=30)
    ax.set_xscale("symlog", linthresh=0.01)
    ax.set_yscale("log")
    ax.set_xlabel("exits per 1,000 guest instructions")
    ax.set_ylabel("slowdown against bare")
    ax.set_title("More exits, more slowdown")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def published(data: dict, path: Path) -> None:
    """popek's group slowdowns beside the published numeric claims (bounds marked with a triangle)."""
    plt = _plt()
    rows = [r for r in compare(data) if r.get("slowdown") is not None]
    pub = {(c["workload"], s): c for c in (data.get("published") or {}).get("claim", []) for s in c["systems"]}
    numeric = [r for r in rows if "slowdown" in pub.get((r["workload"], r["system"]), {})]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    labels = [f"{r['workload']}\n{r['system']} / {r['monitor']}" for r in numeric]
    for i, r in enumerate(numeric):
        c = pub[(r["workload"], r["system"])]
        ax.bar(i - 0.2, c["slowdown"], 0.4, color="#bbbbbb", label="published" if i == 0 else None)
        if c["bound"] != "eq":
            ax.plot(i - 0.2, c["slowdown"], marker="^" if c["bound"] == "ge" else "v", color="black")
        ax.bar(i + 0.2, r["slowdown"], 0.4, color=COLORS.get(r["monitor"]), label="popek" if i == 0 else None)
    ax.set_xticks(range(len(numeric)), labels, fontsize=8)
    ax.set_yscale("log")
    ax.axhline(1, color="black", lw=0.8)
    ax.set_ylabel("slowdown against native / bare")
    ax.set_title("Published (Barham et al., SOSP 2003, §4.1) and popek")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_all(data: dict, outdir: Path) -> list[Path]:
    """Every plot of the study into ``outdir``; return their paths."""
    done = []
    for name, fn in (("slowdown.png", slowdown), ("nano.png", nano), ("exits.png", exits),
                     ("scatter.png", scatter), ("published.png", published)):  # fmt: skip
        if (name == "nano.png" and not data["nano"]) or (name != "nano.png" and not data["macro"]):
            continue
        if name == "published.png" and not any(r.get("slowdown") is not None for r in compare(data)):
            continue  # none of popek's analogues of the published numbers was measured
        fn(data, outdir / name)
        done.append(outdir / name)
    return done
