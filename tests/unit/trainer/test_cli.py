"""`gmm-trainer fit` and `gmm-classify` reproduce the tutorial end to end, and fail clearly."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from numpy.testing import assert_allclose

from mixture.params import ModelParams
from trainer.cli import main as trainer_main


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
    d = tmp_path_factory.mktemp("seed")
    (d / "seed.jsonl").write_text("".join(f'{{"x": {v}}}\n' for v in [0, 1, 10, 11, 12]))
    out = d / "params.json"
    assert (
        trainer_main(
            ["fit", "--data", str(d / "seed.jsonl"), "--priors", "seed", "--out", str(out)]
        )
        == 0
    )
    return out


def test_fit_cli_reproduces_the_tutorial(seed_params):
    model = ModelParams.loads(seed_params.read_bytes())
    order = np.argsort(model.mixture.locs[:, 0])
    assert_allclose(model.mixture.weights[order], [0.375, 0.625], atol=2e-3)
    assert_allclose(model.mixture.locs[order, 0], [0.499, 10.985], atol=2e-3)
    assert_allclose(model.mixture.scale, [0.651], atol=2e-3)
    assert_allclose(model.metadata.extra["init_loss"], 25.1498, atol=1e-3)
    assert model.metadata.n_points == 5


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


def test_fit_cli_csv_columns_and_2d(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.normal([0, 0], 1, size=(300, 2))
    b = rng.normal([8, 5], 1, size=(200, 2))
    rows = np.vstack([a, b])
    text = "a,b,label\n" + "".join(f"{x},{y},z\n" for x, y in rows)
    (tmp_path / "d.csv").write_text(text)
    out = tmp_path / "p.json"
    assert (
        trainer_main(
            ["fit", "--data", str(tmp_path / "d.csv"), "--columns", "a,b", "--out", str(out)]
        )
        == 0
    )
    model = ModelParams.loads(out.read_bytes())
    assert model.mixture.dim == 2
    order = np.argsort(model.mixture.locs[:, 0])
    assert_allclose(model.mixture.locs[order], [[0, 0], [8, 5]], atol=0.25)


@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        ("a,b\n1,2\n", ["--columns", "c"], "no column(s) c"),
        ("a\n1\nx\n", [], "non-numeric"),
        ('{"x": 1}\n{"x": "q"}\n', [], ":2: x must be a number"),
        ('{"x": 1}\n', [], "cannot fit 2 components"),
        ('{"x": 1}\n{"x": 1}\n{"x": 1}\n', [], "zero variance"),
    ],
)
def test_fit_cli_bad_data_is_one_line_and_nonzero(tmp_path, capsys, content, args, message):
    (tmp_path / "d").write_text(content)
    code = trainer_main(
        ["fit", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "p.json"), *args]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1
    assert err.startswith("gmm-trainer: error:")
    assert message in err


def test_fit_cli_missing_file(tmp_path, capsys):
    assert trainer_main(["fit", "--data", str(tmp_path / "nope.csv")]) == 2
    assert "cannot read" in capsys.readouterr().err
