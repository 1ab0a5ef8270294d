"""The device benchmark's tiny version runs end to end on the CPU, so it cannot rot before a
session with a GPU runs the full one (bench/device/run.sh)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import ROOT


def test_the_quick_device_benchmark_runs_on_the_cpu(tmp_path):
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "OUT": str(tmp_path),
        "PYTHON": sys.executable,
        "DEVICE_BENCH_TIMEOUT_S": "170",
    }
    done = subprocess.run(
        ["bash", str(ROOT / "bench/device/run.sh"), "--quick", "--budget-s", "600"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "JAX sees no GPU" in done.stdout
    result = json.loads((tmp_path / "device-cpu.json").read_text())
    assert not result["gpu_seen"] and result["quick"] and "errors" not in result
    assert [b["name"] for b in result["machine"]["backends"]] == ["cpu"]
    models = {r["model"] for r in result["classifier"]}
    assert len(models) == 2 and any("full" in m for m in models)
    for row in result["classifier"]:
        assert set(row["points_per_second"]) == {
            "infer_discrete",
            "infer_discrete_program",
            "closed_form",
        }
    assert {(r["model"], r["slice"]) for r in result["serving"]} == {
        (m, s) for m in models for s in (256, 1024)
    }
    (fit,) = result["fit"]
    assert fit["cold"]["finished"] and len(fit["warm"]) == 2
    assert result["fit_config"]["n_init"] == 100  # the trainer's restarts
    md = (tmp_path / "device-cpu.md").read_text()
    for heading in ("## Classifier", "## Serving path, no Kafka", "## MAP fits"):
        assert heading in md
