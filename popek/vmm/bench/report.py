"""The study's markdown report, generated from its JSON: tables, the comparison with the papers, the plots.

Nothing in the report is written by hand about a particular run: each paragraph of the comparison is a
template chosen by the direction of the difference between popek's figure and the published one, filled
with the measured numbers (exits per 1,000 instructions, the cost of an exit) that explain it.
"""

from __future__ import annotations

import statistics
import tomllib
from pathlib import Path

PUBLISHED = Path(__file__).resolve().parents[3] / "docs" / "published.toml"
PLOTS = {
    "slowdown.png": "Slowdown against the bare machine per workload and monitor (log scale; bars: median, "
    "whiskers: min–max over the repetitions)",
    "nano.png": "Cost of one operation in bare-machine instructions' worth (log scale)",
    "exits.png": "Exits per 1,000 guest instructions by cause, per monitor",
    "scatter.png": "Exits per 1,000 instructions against slowdown, one point per workload and monitor",
    "published.png": "popek's slowdowns beside the published ones (a bar with a triangle is a bound)",
}


def load_published(path: Path = PUBLISHED) -> dict:
    """The published claims of docs/published.toml ({} when the file is not there, e.g. an installed copy)."""
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        return {}


def _f(x: float | None, digits: int = 2) -> str:
    if x is None:
        return "n/a"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def _range(s: dict, digits: int = 2) -> str:
    return f"{_f(s['median'], digits)} ({_f(s['min'], digits)}–{_f(s['max'], digits)})"


def macro_lookup(data: dict) -> dict[tuple[str, str], dict]:
    """Macrobenchmark rows by (workload, monitor)."""
    return {(r["workload"], r["monitor"]): r for r in data["macro"]}


def group_slowdown(data: dict, group: str, monitor: str) -> dict | None:
    """The median over a group's workloads of a monitor's median slowdown, with the group's extremes."""
    rows = [r for r in data["macro"] if r["group"] == group and r["monitor"] == monitor]
    if not rows:
        return None
    meds = [r["slowdown"]["median"] for r in rows]
    return {"median": statistics.median(meds), "min": min(meds), "max": max(meds),
            "workloads": [r["workload"] for r in rows], "rows": rows}  # fmt: skip


def exit_cost_us(rows: list[dict], bare: dict[str, dict]) -> float | None:
    """µs of extra time per exit: (time per unit - bare's) / exits per unit, over a group's rows."""
    costs = []
    for r in rows:
        b = bare.get(r["workload"])
        if not b or not r["exits"] or r["monitor"] == "bare":
            continue
        exits_per_unit = r["exits_per_1000"] * r["steps_per_unit"] / 1000
        if exits_per_unit > 0:
            costs.append((r["us_per_unit"]["median"] - b["us_per_unit"]["median"]) / exits_per_unit)
    return statistics.median(costs) if costs else None


def compare(data: dict) -> list[dict]:
    """Each published claim beside popek's analogue: popek's figure, agreement and the templated reason."""
    pub = data.get("published") or {}
    analogues = pub.get("analogues", {})
    bare = {r["workload"]: r for r in data["macro"] if r["monitor"] == "bare"}
    out = []
    for c in pub.get("claim", []):
        for system in c["systems"]:
            monitor = analogues.get(system)
            row = {"paper": c["paper"], "place": c["place"], "quote": c["quote"], "workload": c["workload"],
                   "group": c["group"], "system": system, "monitor": monitor, "published": _published(c)}  # fmt: skip
            row.update(_popek_side(data, c, monitor, bare, analogues))
            out.append(row)
    return out


def _published(c: dict) -> str:
    if "slowdown" in c:
        sign = {"eq": "", "le": "≤ ", "ge": "≥ "}[c["bound"]]
        return f"{sign}{c['slowdown']:.2f}×"
    if c.get("than"):
        return f"{c['direction']} than the {c['than']}"
    return c["direction"]


def _popek_side(data: dict, c: dict, monitor: str | None, bare: dict, analogues: dict) -> dict:
    if c["group"] == "nano":
        return _nano_side(data, c, monitor, analogues)
    g = group_slowdown(data, c["group"], monitor) if monitor else None
    if g is None:
        return {"popek": None, "verdict": "not measured", "why": f"The study did not run `{monitor}` on this group."}
    s = g["median"]
    popek = f"{s:.2f}× ({', '.join(g['workloads'])})"
    exits = [r["exits_per_1000"] for r in g["rows"] if r["exits_per_1000"] is not None]
    per_k = statistics.median(exits) if exits else None
    cost = exit_cost_us(g["rows"], bare)
    more = [r["steps_per_unit"] / bare[r["workload"]]["steps_per_unit"] for r in g["rows"] if r["workload"] in bare]
    c = {**c, "instructions": statistics.median(more) if more else 1.0}
    if "slowdown" in c:
        target, bound = c["slowdown"], c["bound"]
        if bound == "eq":
            agrees = abs(s - target) <= max(0.1, 0.1 * target)
        elif bound == "le":
            agrees = s <= target * 1.1  # within the noise of a shared machine
        else:
            agrees = s >= target * 0.9
    else:
        agrees = s <= 1.25 if c["direction"] == "near-native" else s > 1.1
    verdict = "agrees" if agrees else "differs"
    return {"popek": popek, "slowdown": s, "verdict": verdict,
            "why": _why(data, verdict, s, monitor, per_k, cost, c)}  # fmt: skip


def _why(data: dict, verdict: str, s: float, monitor: str, per_k: float | None, cost: float | None, c: dict) -> str:
    """The templated explanation: which way popek's figure lies, and what the exit counts say about it."""
    ns = data["bare_ns_per_instruction"]["median"]
    if monitor == "full":
        mech = "every instruction is interpreted, so the cost is the interpreter's speed, not exits"
    elif per_k is None or per_k < 0.1:
        mech = f"`{monitor}` leaves the guest almost never ({_f(per_k)} exits per 1,000 instructions)"
    else:
        mech = f"`{monitor}` makes {per_k:.2f} exits per 1,000 instructions"
        if cost is not None and cost > 0:
            mech += (
                f", each adding about {cost:.2f} µs, {cost * 1000 / ns:,.0f} bare instructions' worth "
                "(a real exit costs a few hundred)"
            )
    if verdict == "agrees":
        return f"Same shape: popek's `{monitor}` runs at {s:.2f}× bare, in line with the published figure; {mech}."
    if s < _target(c):
        return (
            f"popek's `{monitor}` is cheaper here ({s:.2f}× bare) than the published figure: {mech}, while "
            "the published workload did work popek's analogue lacks (disks, page tables, many processes), "
            "whose virtualization the papers paid for."
        )
    extra = c.get("instructions", 1.0)
    guest = (
        f" Part of it is the guest: this build runs {extra:.2f}× the bare build's instructions per unit of work "
        "(a paravirtual HAL keeps in memory what the native one keeps in control registers)."
        if extra > 1.05
        else ""
    )
    return (
        f"popek's `{monitor}` is dearer here ({s:.2f}× bare) than the published figure: {mech}.{guest} The rest "
        "is the monitor's own time outside the guest: entering and leaving the core and its bookkeeping per "
        "slice, which a workload made of short runs pays often."
    )


def _target(c: dict) -> float:
    if "slowdown" in c:
        return c["slowdown"]
    return 1.25 if c["direction"] == "near-native" else 1.1


def _nano_side(data: dict, c: dict, monitor: str | None, analogues: dict) -> dict:
    """Adams & Agesen's abstract: count the operations on which trap-and-emulate is slower than rewriting."""
    other = analogues.get(c.get("than", ""))
    by = {(r["name"], r["monitor"]): r for r in data["nano"] if r["profile"] == "classic"}
    names = sorted({r["name"] for r in data["nano"]})
    pairs = [(n, by[(n, monitor)], by[(n, other)]) for n in names if (n, monitor) in by and (n, other) in by]
    if not pairs:
        return {"popek": None, "verdict": "not measured", "why": f"The study ran no `{monitor}`/`{other}` pair."}
    slower = [n for n, a, b in pairs if a["ns_per_op"]["median"] > b["ns_per_op"]["median"]]
    popek = f"`{monitor}` slower than `{other}` on {len(slower)} of {len(pairs)} operations"
    verdict = "agrees" if slower else "differs"
    faster = [n for n, _, _ in pairs if n not in slower]
    why = (
        f"`{monitor}` is slower on {', '.join(slower) or 'none'}, faster or even on {', '.join(faster) or 'none'}. "
        f"An operation costs `{monitor}` one exit per privileged instruction of the guest kernel, where "
        f"`{other}` runs most of them as rewritten twins on the core and calls out only for the rest; the "
        "papers' hardware VMM likewise paid an exit per sensitive event the binary translator handled inline."
    )
    return {"popek": popek, "verdict": verdict, "why": why}


def markdown(data: dict, plots: bool = True) -> str:
    """The whole report as markdown."""
    m = data["meta"]
    lines = ["# The benchmark study: popek's strategies against the published measurements", "",
             f"Made by `{m['command']}` on commit `{m['commit']}` ({m['date']}), {m['machine']}"
             f"{_changes(m['commit'])}. "
             f"{'A quick run: short, few repetitions, for a smoke test only.' if m['quick'] else ''}", "",
             "Every figure is the median of the repetitions with the minimum and maximum in brackets; the monitors "
             "take turns within each repetition, so the shared machine's slow spells fall on all of them. Ratios "
             "are the numbers to read: absolute times move from run to run.", ""]  # fmt: skip
    lines += _nano_section(data) + _macro_section(data) + _comparison_section(data)
    if plots:
        lines += ["## Plots", ""] + [f"![{t}]({f})" + "\n" for f, t in PLOTS.items()]
    return "\n".join(lines).rstrip() + "\n"


def _changes(rev: str) -> str:
    """What a '+changes' commit means, said once in the report."""
    return ", the tree holding uncommitted changes to tracked files on top of it" if rev.endswith("+changes") else ""


def _nano_section(data: dict) -> list[str]:
    ns = data["bare_ns_per_instruction"]
    out = ["## Nanobenchmarks", "",
           "One operation in a loop (`guests/bench/nano.s`), the loop timed with and without it: (with − without) "
           "/ operations. *Instr.* is that time in guest instructions' worth, divided by the bare machine's time "
           f"per plain instruction, {_range(ns, 2)} ns here. *Exits* counts the exits of one operation. The "
           "analogue column names the row of Adams & Agesen's nanobenchmarks each mirrors.", ""]  # fmt: skip
    for profile in sorted({r["profile"] for r in data["nano"]}):
        out += [f"### Profile `{profile}`", "",
                "| operation | analogue | monitor | ns / op | instr. / op | exits / op |",
                "|---|---|---|---:|---:|---:|"]  # fmt: skip
        for r in data["nano"]:
            if r["profile"] != profile:
                continue
            instr = {k: v / ns["median"] for k, v in r["ns_per_op"].items()}
            out.append(f"| {r['name']} | {r['analogue']} | {r['monitor']} | {_range(r['ns_per_op'], 1)} | "
                       f"{_range(instr, 1)} | {r['exits_per_op']:.2f} |")  # fmt: skip
        out.append("")
    return out


def _macro_section(data: dict) -> list[str]:
    out = ["## Macrobenchmarks", "",
           "Each monitor runs each workload at the size that takes it about "
           f"{data['meta']['macro_seconds']} s (the *size* column, in units of the workload), so start-up is "
           "amortized alike; *× bare* is its time per unit against the bare machine's in the same repetition. "
           "Full emulation never leaves its interpreter, so it has no exits.", "",
           "| workload | unit | monitor | µs / unit | × bare | size | exits / 1000 instr | top exits per unit |",
           "|---|---|---|---:|---:|---:|---:|---|"]  # fmt: skip
    for r in data["macro"]:
        causes = sorted(r["exits_by_cause"].items(), key=lambda kv: -kv[1])[:3]
        top = ", ".join(f"{c} {n / r['size']:.3g}" for c, n in causes)
        cells = [r["workload"], r["unit"], r["monitor"], _range(r["us_per_unit"], 1), _range(r["slowdown"], 2),
                 f"{r['size']:,}", _f(r["exits_per_1000"]), top or "—"]  # fmt: skip
        out.append("| " + " | ".join(cells) + " |")
    return [*out, ""]


def _comparison_section(data: dict) -> list[str]:
    pub = data.get("published") or {}
    papers = pub.get("papers", {})
    out = ["## Beside the published measurements", "",
           "Published claims from `docs/published.toml`, each quoted from the paper's text, set beside popek's "
           "analogue: the bare machine for native, `pv` for XenoLinux, `rewrite` (binary rewriting) for VMware's "
           "software VMM, `trap` (trap-and-emulate) for the hardware VMM. popek's figure for a group is the median "
           "over its workloads of each workload's median slowdown.", ""]  # fmt: skip
    rows = compare(data)
    if not rows:
        return [*out, "docs/published.toml was not found, so there is nothing to compare with.", ""]
    out += ["| paper | benchmark | system (popek) | published | popek | shape |", "|---|---|---|---|---|---|"]
    for r in rows:
        venue = papers.get(r["paper"], {}).get("venue", r["paper"])
        cells = [f"{venue}, {r['place']}", r["workload"], f"{r['system']} (`{r['monitor']}`)", r["published"],
                 r["popek"] or "n/a", r["verdict"]]  # fmt: skip
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    for r in rows:
        paper = papers.get(r["paper"], {})
        out += [f"**{r['workload']}, {r['system']} against `{r['monitor']}`.** {paper.get('authors', '')}, "
                f"\"{paper.get('title', r['paper'])}\", {paper.get('venue', '')}, {r['place']}: "
                f"\"{r['quote']}\" {r['why']}", ""]  # fmt: skip
    missing = pub.get("missing", [])
    if missing:
        out += ["**Left out.** These published figures could not be found and checked, so they are not used:", ""]
        out += [f"- {papers.get(x['paper'], {}).get('venue', x['paper'])}: {x['what']} ({x['why']})." for x in missing]
        out.append("")
    return out
