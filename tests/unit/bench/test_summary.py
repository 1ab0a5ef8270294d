"""The benchmark figures of docs/benchmarks.md are the ones in bench/results/ (bench.summary
renders them)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from bench import summary
from tests.conftest import ROOT

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
    worker = next(r for r in stream["results"] if r["max_delay_ms"] is not None)
    worker.update(p99_budget_ms=1.0, p99_ms_range=[10.0, 90.0])
    for rnd in stream["rounds"]:
        for r in rnd:
            if r["system"] == worker["system"]:
                r["latency_ms"]["p99"] = 50.0
    (tmp_path / "stream.json").write_text(json.dumps(stream))
    text = summary.render(tmp_path)
    assert "(10-90)" in text
    assert "budget 1 ms: over at the median and in every round" in text


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
    code = "import sys, bench.summary; print(sorted({'jax', 'numpy'} & set(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
