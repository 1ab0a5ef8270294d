"""The benchmark figures of docs/benchmarks.md are the ones in bench/results/ (bench.summary
renders them)."""

from __future__ import annotations

import json
import shutil

import pytest

from bench import summary
from tests.conftest import ROOT, imported_by

FIX = "run `python -m bench.summary --write` (or `make bench-summary`); commit docs/benchmarks.md"


def test_benchmark_page_summary_is_generated_from_results():
    page = ROOT / "docs" / "benchmarks.md"
    assert page == summary.PAGE
    assert summary.current(page) == summary.render(ROOT / "bench" / "results"), (
        "docs/benchmarks.md's summary (between the bench-summary markers) differs from what "
        f"bench/results/*.json say: {FIX}"
    )


def test_readme_has_no_benchmark_summary_of_its_own():
    readme = (ROOT / "README.md").read_text()
    assert summary.BEGIN not in readme and summary.END not in readme
    assert "docs/benchmarks.md" in readme


def test_summary_covers_every_benchmark_with_its_command():
    text = summary.render()
    for stem, title, command, _ in summary.BENCHMARKS:
        assert f"- **{title}** (`{command}`" in text, stem
    assert "not measured" not in text, "a results file is missing from bench/results/"


def test_a_missing_results_file_reads_not_measured(tmp_path):
    for name in ("inference", "fit", "kafka_roundtrip"):
        shutil.copy(summary.RESULTS / f"{name}.json", tmp_path)
    text = summary.render(tmp_path)
    for title, stem in (("Stream", "stream"), ("Scale-out", "scaleout"), ("Soak", "soak")):
        assert f"- **{title}** (`python -m bench.{stem}`): not measured" in text
    assert "- **Classifier** (`python -m bench.inference`; " in text
    assert "not measured" in summary.render(tmp_path / "nothing-here")


def test_write_replaces_only_the_marked_section(tmp_path):
    page = tmp_path / "benchmarks.md"
    page.write_text(
        f"# Title\n\nIntro.\n\n{summary.BEGIN}\n- typed by hand: 1,000,000 records/s\n"
        f"{summary.END}\n\n## Next\n"
    )
    assert summary.write(page) is True
    text = page.read_text()
    assert text.startswith("# Title\n\nIntro.\n\n")
    assert text.endswith(f"{summary.END}\n\n## Next\n")
    assert "typed by hand" not in text
    assert summary.current(page) == summary.render()
    assert summary.write(page) is False


def test_stream_rounds_worst_round_and_budget(tmp_path):
    stream = json.loads((summary.RESULTS / "stream.json").read_text())
    section = stream["by_partitions"][0]
    worker = next(r for r in section["results"] if r["max_delay_ms"] is not None)
    worker.update(p99_budget_ms=1.0, p99_ms_range=[10.0, 90.0])
    (tmp_path / "stream.json").write_text(json.dumps(stream))
    text = summary.render(tmp_path)
    assert "(10-90)" in text
    # The budget is judged at the fixed loads, in every round.
    assert "at 5,000/s (budget 1 ms: over at the median and in every round)" in text
    assert "at 20,000/s (budget 1 ms: over at the median and in every round)" in text


def test_a_caveat_in_a_results_file_is_shown(tmp_path):
    soak = json.loads((summary.RESULTS / "soak.json").read_text())
    soak["caveat"] = "measured with an older worker"
    (tmp_path / "soak.json").write_text(json.dumps(soak))
    assert "**Caveat:** Measured with an older worker. One run" in summary.render(tmp_path)


def test_markers_must_be_there(tmp_path):
    page = tmp_path / "benchmarks.md"
    page.write_text("# no markers\n")
    with pytest.raises(ValueError, match="bench-summary"):
        summary.write(page)


def test_no_heavy_imports():
    assert imported_by("import bench.summary", {"jax", "numpy"}) == []


def _run(system: str, rate: float, p99: float, saturated_at: float | None = None) -> dict:
    """One bench.stream measurement as `measure` returns it (fixed loads of 5,000 and 20,000)."""

    def lat(p: float) -> dict:
        return {"p50": p / 2, "p95": p * 0.9, "p99": p, "max": p * 2}

    loads = []
    for load in (5000.0, 20000.0):
        if saturated_at is not None and load >= saturated_at:
            loads.append(
                {"load": f"{load:g}", "target_records_per_second": load, "saturated": True}
            )
        else:
            loads.append(
                {
                    "load": f"{load:g}",
                    "target_records_per_second": load,
                    "saturated": False,
                    "offered_records_per_second": load * 0.99,
                    "records": int(load * 8),
                    "latency_ms": lat(p99 / 2),
                }
            )
    return {
        "system": system,
        "throughput_records_per_second": rate,
        "latency_load_records_per_second": rate / 2,
        "latency_offered_records_per_second": rate / 2,
        "latency_records": int(rate * 4),
        "latency_ms": lat(p99),
        "loads": loads,
    }


def _stream_payload(tmp_path) -> dict:
    """bench.stream's results for 2 and 12 partitions, two rounds, from its own summarizer: the
    worker at 12 partitions failed in round 2, the Faust pipe cannot take 20,000 records/s."""
    from bench import stream

    chosen = [
        s
        for s in stream.systems(stream.WORKER_CONFIGS, tmp_path, quix_python="/nonexistent")
        if s.key in ("rdkafka", "quix", "faust", "worker-1024")
    ]
    names = {s.key: s.name for s in chosen}

    def round_(rdk: float, quix: float, worker: float, worker_p99: float, fail: bool) -> dict:
        runs = {
            "rdkafka": _run(names["rdkafka"], rdk, 20.0),
            "quix": _run(names["quix"], quix, 30.0),
            "faust": _run(names["faust"], 8000.0, 100.0, saturated_at=10_000),
            "worker-1024": _run(names["worker-1024"], worker, worker_p99),
        }
        if fail:
            runs["worker-1024"] = {"system": names["worker-1024"], "error": "AssertionError()"}
        return runs

    by_partitions = {
        2: [round_(100e3, 25e3, 50e3, 40.0, False), round_(100e3, 20e3, 40e3, 80.0, False)],
        12: [round_(90e3, 30e3, 45e3, 35.0, False), round_(80e3, 30e3, 0, 0, True)],
    }
    payload = stream.report(
        by_partitions, chosen, [], 200_000, 8.0, [5000.0, 20000.0], 2, False, tmp_path, plot=False
    )
    payload.pop("markdown")
    return payload


def test_stream_per_partition_count_ratios_loads_and_budget(tmp_path):
    payload = _stream_payload(tmp_path)
    two = {r["key"]: r for r in payload["by_partitions"][0]["results"]}
    worker = two["worker-1024"]
    assert worker["throughput_vs"]["rdkafka"] == {"median": 0.45, "range": [0.4, 0.5], "worst": 0.4}
    assert worker["throughput_vs"]["quix"]["median"] == 2.0
    assert two["faust"]["loads"][1] == {
        "load": "20000",
        "target_records_per_second": 20000.0,
        "saturated_rounds": 2,
    }
    twelve = {r["key"]: r for r in payload["by_partitions"][1]["results"]}
    assert twelve["worker-1024"]["rounds"] == 1
    assert twelve["worker-1024"]["failed_rounds"] == ["AssertionError()"]
    assert twelve["worker-1024"]["throughput_vs"]["rdkafka"]["median"] == 0.5

    md = (tmp_path / "stream.md").read_text()
    assert "## 2 partitions" in md and "## 12 partitions" in md
    assert "| 0.45 (0.40) | 2.00 (2.00) |" in md
    assert "saturated" in md
    assert "(failed in 1 round(s))" in md

    (tmp_path / "stream.json").write_text(json.dumps(payload))
    text = summary.render(tmp_path)
    line = next(x for x in text.splitlines() if x.startswith("  - worker batch 1024"))
    assert (
        "**2 partitions**: 45,000 records/s (40,000-50,000), 0.45x (worst 0.40) the rdkafka" in line
    )
    assert "2.00x (worst 2.00) the Quix app" in line
    # The budget (max delay 20 ms + 10) is judged at each fixed load: the worker's p99 there
    # was 20 ms in one round and 40 ms in the other.
    assert "budget 30 ms: met at the median, over in 1 of 2 rounds" in line
    assert "**12 partitions**: 45,000 records/s, 0.50x the rdkafka pipe" in line
    assert "failed in 1 round(s)" in line
    faust = next(x for x in text.splitlines() if x.startswith("  - Faust pipe"))
    assert "saturated at 20,000/s" in faust
    assert "fixed loads of 5,000 and 20,000 records/s" in text


def test_stream_quick_results_never_replace_the_published_ones(tmp_path):
    from bench import stream

    quick = stream.output_dir(None, quick=True)
    assert quick != stream.RESULTS and quick.is_dir()
    quick.rmdir()
    assert stream.output_dir(None, quick=False) == stream.RESULTS
    assert stream.output_dir(tmp_path, quick=True) == tmp_path
