"""Run the whole study (`popek bench`): nanobenchmarks, macrobenchmarks, JSON, markdown report and plots."""

from __future__ import annotations

import datetime
import json
import platform
import subprocess
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from popek.vmm.bench import measure, report
from popek.vmm.bench.measure import Plan

DEFAULT_OUT = Path("benchmarks/results/study")
MATPLOTLIB_MISSING = "popek bench draws its plots with matplotlib: pip install 'popek[bench]' (or matplotlib)"


def matplotlib_available() -> bool:
    """Whether matplotlib can be imported (it is the optional ``bench`` extra)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def commit() -> str:
    """The commit the study runs on (with '+changes' when the tree differs from it), or 'unknown'."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True,
                             check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("+changes" if dirty else "")


def run_study(plan: Plan, command: str, quick: bool, show_progress: bool = True) -> dict:
    """Measure everything the plan names; return the study's JSON object."""
    progress = Progress(TextColumn("{task.description:<32}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        disable=not show_progress, transient=False)  # fmt: skip
    data: dict = {"meta": {"command": command, "commit": commit(), "quick": quick,
                           "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                           "machine": f"{platform.machine()}, {_cpus()}, Python {platform.python_version()}",
                           "monitors": plan.monitors, "profiles": plan.profiles, "reps": plan.reps,
                           "nano_seconds": plan.nano_seconds, "macro_seconds": plan.macro_seconds},
                  "nano": [], "macro": []}  # fmt: skip
    with progress:
        task = progress.add_task("bare instruction time", total=plan.steps())

        def tick() -> None:
            progress.advance(task)

        data["bare_ns_per_instruction"] = measure.bare_instruction_ns(plan, tick)
        for profile in plan.profiles:
            for nano in plan.nanos:
                progress.update(task, description=f"nano {nano.name} ({profile})")
                data["nano"] += measure.nano_rows(plan, nano, profile, tick)
        for macro in plan.macros:
            progress.update(task, description=f"macro {macro.name}")
            data["macro"] += measure.macro_rows(plan, macro, tick)
        progress.update(task, description="done")
    data["published"] = report.load_published()
    return data


def _cpus() -> str:
    import os

    return f"{os.cpu_count()} CPUs"


def write(data: dict, out: Path, plots: bool = True) -> list[Path]:
    """Write study.json, report.md and (with matplotlib) the PNG plots into ``out``; return what was written."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "study.json", out / "report.md"]
    written[0].write_text(json.dumps(data, indent=1) + "\n")
    written[1].write_text(report.markdown(data, plots=plots))
    if plots:
        from popek.vmm.bench import plots as drawing

        written += drawing.draw_all(data, out)
    return written


def main(quick: bool, out: str | None, monitors: list[str] | None, workloads: list[str] | None, command: str) -> int:
    """Entry point of ``popek bench``: 0 when the study ran and its files were written."""
    if not matplotlib_available():
        raise ValueError(MATPLOTLIB_MISSING)
    plan = Plan.make(quick, monitors, workloads)
    data = run_study(plan, command, quick)
    for path in write(data, Path(out) if out else DEFAULT_OUT):
        print(path)
    return 0
