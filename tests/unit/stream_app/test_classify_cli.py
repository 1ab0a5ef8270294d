"""`gmm-classify` (stream_app.classify_cli) gives the tutorial's classes offline, fails clearly."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from mixture.params import FitMetadata, MixtureParams, ModelParams
from wire import assignment

# The tutorial's MAP fit of [0, 1, 10, 11, 12] (tests/unit/trainer/test_cli.py checks the trainer
# reproduces it).
TUTORIAL = ModelParams(
    1,
    MixtureParams([0.375, 0.625], [[0.49894], [10.98446]], [0.651434]),
    FitMetadata(fitted_at="2026-01-01T00:00:00+00:00", n_points=5),
)


def classify(params_path, stdin: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "stream_app.classify_cli", "--params", str(params_path), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def seed_params(tmp_path_factory):
    out = tmp_path_factory.mktemp("seed") / "params.json"
    out.write_text(TUTORIAL.dumps())
    return out


def test_classify_cli_gives_the_tutorials_classes(seed_params):
    result = classify(seed_params, "".join(f'{{"x": {v}}}\n' for v in [0, 1, 10, 11, 12]))
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    model = ModelParams.loads(seed_params.read_bytes())
    low = int(np.argmin(model.mixture.locs[:, 0]))
    classes = [0 if r["assignment"] == low else 1 for r in rows]
    assert classes == [0, 0, 1, 1, 1]
    assert [r["id"] for r in rows] == [1, 2, 3, 4, 5]  # line numbers stand in for missing ids
    assert all(r["model_version"] == 1 and abs(sum(r["probs"]) - 1) < 1e-5 for r in rows)
    assert rows[0]["x"] == 0.0
    # The worker's assignment record, offline: no source, no input time.
    assert all(r["source"] is None and r["ts_in"] is None and r["model"] == "gmm" for r in rows)
    assert all(
        assignment.decode(line) == row
        for line, row in zip(result.stdout.splitlines(), rows, strict=True)
    )


@pytest.mark.parametrize("temperature", ["0", "1"])
def test_classify_cli_reports_bad_lines_and_keeps_the_good(seed_params, temperature):
    lines = ['{"id": "a", "x": 0}', "garbage", '{"x": [1, 2]}', '{"id": "b", "x": 12}', '{"y": 1}']
    result = classify(seed_params, "\n".join(lines) + "\n", "--temperature", temperature)
    assert result.returncode == 1
    assert [json.loads(r)["id"] for r in result.stdout.splitlines()] == ["a", "b"]
    errors = result.stderr.strip().splitlines()
    assert errors[0].startswith("gmm-classify: line 2: not_json")
    assert errors[1].startswith("gmm-classify: line 3: wrong_dim")
    assert errors[2].startswith("gmm-classify: line 5: missing_x")
    assert "3 bad line(s)" in errors[3]


def test_classify_cli_rejects_bad_params(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": 1, "weights": [0.2, 0.2], "locs": [0, 1], "scale": 1}')
    result = classify(bad, "")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "sum to 1" in result.stderr


def test_classify_cli_serves_full_covariances_and_missing_coordinates(tmp_path):
    tril = np.array([[[1.0, 0.0], [0.8, 0.6]], [[1.0, 0.0], [-0.8, 0.6]]])
    model = ModelParams(
        2, MixtureParams([0.5, 0.5], [[0.0, 0.0], [4.0, 4.0]], tril), covariance="full"
    )
    path = tmp_path / "full.json"
    path.write_text(model.dumps())
    lines = ['{"id": "a", "x": [0.1, 0.2]}', '{"id": "b", "x": [null, 4.5]}', '{"x": [null, null]}']
    result = classify(path, "\n".join(lines) + "\n")
    assert result.returncode == 1
    rows = {r["id"]: r for r in map(json.loads, result.stdout.splitlines())}
    assert rows["a"]["assignment"] == 0 and "missing" not in rows["a"]
    assert rows["b"]["assignment"] == 1 and rows["b"]["missing"] == [0]
    assert rows["b"]["x"] == [None, 4.5]
    assert "no_observed_values" in result.stderr


def test_classify_cli_reports_an_overflowing_point_as_not_classifiable(tmp_path):
    """A point within the accepted range whose squared distance overflows float32 (1e15 away
    with a spread of 1e-14) is reported as the worker dead-letters it, never printed as NaN."""
    params = tmp_path / "tiny.json"
    params.write_text('{"version": 1, "weights": [0.5, 0.5], "locs": [0, 1e-12], "scale": 1e-14}')
    result = classify(params, '{"x": 5e14}\n{"x": 1e-13}\n')
    assert result.returncode == 1
    assert [json.loads(r)["assignment"] for r in result.stdout.splitlines()] == [0]
    assert "NaN" not in result.stdout
    assert result.stderr.startswith("gmm-classify: line 1: not_classifiable")


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--batch", "0"], "--batch must be >= 1"), (["--seed", str(2**70)], "--seed must be")],
)
def test_classify_cli_bad_arguments_exit_2(seed_params, args, message):
    result = classify(seed_params, "", *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
