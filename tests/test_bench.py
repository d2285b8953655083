"""`popek bench`: the study runs end to end on a tiny configuration and writes files that parse (no timing)."""

from __future__ import annotations

import json
import tomllib

import pytest

from popek import cli
from popek.vmm.bench import report, study
from popek.vmm.bench.measure import Plan
from popek.vmm.bench.workloads import NANOS


def test_a_quick_study_of_one_monitor_writes_json_a_report_and_plots(tmp_path) -> None:
    plan = Plan.make(quick=True, monitors=["trap"], workloads=["mfcr", "crc32"])
    data = study.run_study(plan, "popek bench --quick", quick=True, show_progress=False)
    plots = study.matplotlib_available()
    written = study.write(data, tmp_path, plots=plots)
    loaded = json.loads((tmp_path / "study.json").read_text())
    assert {(r["name"], r["monitor"]) for r in loaded["nano"]} == {("mfcr", "bare"), ("mfcr", "trap")}
    assert {(r["workload"], r["monitor"]) for r in loaded["macro"]} == {("crc32", "bare"), ("crc32", "trap")}
    trap = next(r for r in loaded["nano"] if r["monitor"] == "trap")
    assert trap["exits_per_op"] == 1  # one mfcr, one PRIV exit: the counts are exact even where times are not
    text = (tmp_path / "report.md").read_text()
    assert "| mfcr |" in text and "| crc32 |" in text and loaded["meta"]["commit"] in text
    if plots:
        pngs = [p for p in written if p.suffix == ".png"]
        assert pngs and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_without_matplotlib_popek_bench_says_so_in_one_line(monkeypatch, capsys) -> None:
    monkeypatch.setattr(study, "matplotlib_available", lambda: False)
    assert cli.main(["bench", "--quick"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "matplotlib" in err


def test_an_unknown_workload_is_a_usage_error(capsys) -> None:
    assert cli.main(["bench", "--quick", "--workload", "nosuch"]) == 2
    assert "unknown workload nosuch" in capsys.readouterr().err


def test_every_published_claim_quotes_a_paper_and_says_how_to_read_it() -> None:
    pub = tomllib.loads(report.PUBLISHED.read_text())
    for claim in pub["claim"]:
        assert claim["paper"] in pub["papers"] and claim["quote"] and claim["place"]
        assert ("slowdown" in claim and claim["bound"] in ("eq", "le", "ge")) or claim["direction"]
        assert all(s in pub["analogues"] for s in claim["systems"])


@pytest.mark.parametrize("nano", [n.name for n in NANOS if n.pv])
def test_a_nanobenchmark_counts_the_same_operations_on_pv_as_on_bare(nano: str) -> None:
    bench = next(n for n in NANOS if n.name == nano)
    assert bench.run("pv", "classic", 300, True).units == bench.run("bare", "classic", 300, True).units
