"""`gmm-trainer fit` reproduces the tutorial, and fails clearly."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
from numpy.testing import assert_allclose

from mixture.params import ModelParams
from trainer.cli import _standard_deviations
from trainer.cli import main as trainer_main


@pytest.fixture(scope="module")
def seed_params(tmp_path_factory):
    d = tmp_path_factory.mktemp("seed")
    (d / "seed.jsonl").write_text("".join(f'{{"x": {v}}}\n' for v in [0, 1, 10, 11, 12]))
    out = d / "params.json"
    assert (
        trainer_main(
            [
                "fit",
                "--data",
                str(d / "seed.jsonl"),
                "--priors",
                "seed",
                "--init",
                "random",
                "--out",
                str(out),
            ]
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
        ('{"x": 1}\n{"x": 2}\n', ["--components", "many"], "integer >= 1 or auto"),
        ('{"x": 1}\n{"x": 2}\n', ["--reg-covar", "-1"], "--reg-covar must be in"),
        (
            '{"x": 1}\n{"x": 2}\n',
            ["--covariance", "full", "--per-component-scale"],
            "older name of --covariance diag",
        ),
        ("a\n1\n1e16\n", [], ":3: x has a coordinate beyond"),
        ("a\n1\n1e300\n", [], ":3: x has a coordinate beyond"),
        ("a\n1\ninf\n", [], ":3: x contains NaN or infinity"),
        ("a\n1\nnan\n", [], ":3: x contains NaN or infinity"),
        ("a,a\n1,2\n", [], "names column(s) a more than once"),
        ("a\n1\n2,3\n", [], ":3: more fields than the header names"),
        ('{"x": [1, null]}\n{"x": [2, null]}\n', [], "no observed value in dimension(s) [1]"),
        ('{"x": 1}\n{"x": 1' + "0" * 400 + "}\n", [], ":2: x has a coordinate beyond"),
        ('{"x": 1}\n{"x": 2}\n', ["--restarts", "0"], "--restarts must be >= 1"),
        ('{"x": 1}\n{"x": 2}\n', ["--version", "-1"], "--version must be >= 0"),
        ('{"x": 1}\n{"x": 2}\n', ["--seed", str(2**70)], "--seed must be in"),
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


def test_fit_cli_not_utf8(tmp_path, capsys):
    (tmp_path / "d").write_bytes(b"a\n1\n\xff\xfe\n")
    assert trainer_main(["fit", "--data", str(tmp_path / "d")]) == 2
    assert "is not UTF-8 text" in capsys.readouterr().err


def test_fit_cli_reads_a_csv_with_a_byte_order_mark(tmp_path):
    (tmp_path / "d.csv").write_bytes(
        "\ufeffa,b\n".encode()
        + b"".join(f"{v},{v % 3}\n".encode() for v in [0, 1, 10, 11, 12, 0.5, 10.5])
    )
    out = tmp_path / "p.json"
    args = ["fit", "--data", str(tmp_path / "d.csv"), "--columns", "a", "--out", str(out)]
    assert trainer_main(args) == 0
    assert ModelParams.loads(out.read_bytes()).mixture.dim == 1


def test_fit_cli_missing_file(tmp_path, capsys):
    assert trainer_main(["fit", "--data", str(tmp_path / "nope.csv")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_fit_cli_full_covariance_auto_k_prints_each_bic(tmp_path, capsys):
    rng = np.random.default_rng(4)
    rows = np.vstack(
        [
            rng.multivariate_normal([0, 0], [[1, 0.8], [0.8, 1]], 300),
            rng.multivariate_normal([6, 6], [[1, -0.7], [-0.7, 1]], 300),
        ]
    )
    (tmp_path / "d.csv").write_text("a,b\n" + "".join(f"{x},{y}\n" for x, y in rows))
    out = tmp_path / "p.json"
    args = ["fit", "--data", str(tmp_path / "d.csv"), "--out", str(out)]
    assert trainer_main([*args, "--covariance", "full", "-k", "auto", "--max-components", "3"]) == 0
    printed = capsys.readouterr().out
    assert [line.split(":")[0] for line in printed.splitlines()[:3]] == ["K=1", "K=2", "K=3"]
    assert "K=2: BIC" in printed and "<- lowest" in printed.splitlines()[1]
    model = ModelParams.loads(out.read_bytes())
    assert (model.covariance, model.mixture.n_components) == ("full", 2)
    assert model.mixture.scale.shape == (2, 2, 2)
    assert set(model.metadata.extra["bic_by_components"]) == {"1", "2", "3"}


def test_fit_cli_unknown_covariance_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        trainer_main(["fit", "--data", "x", "--covariance", "banded"])
    assert exc.value.code == 2
    assert "unknown covariance type 'banded'" in capsys.readouterr().err


def test_fit_summary_shows_locations_apart_at_an_epoch_offset(tmp_path, capsys):
    """At 1.7e9 (epoch seconds) the summary still shows two locations 11 apart, not `1.7e+09`
    twice."""
    offset = 1.7e9
    values = [0, 1, 10, 11, 12]
    (tmp_path / "d.jsonl").write_text("".join(f'{{"x": {offset + v!r}}}\n' for v in values))
    out = tmp_path / "p.json"
    assert trainer_main(["fit", "--data", str(tmp_path / "d.jsonl"), "--out", str(out)]) == 0
    summary = capsys.readouterr().out
    assert "e+09" not in summary
    locs = np.sort(ModelParams.loads(out.read_bytes()).mixture.locs[:, 0])
    for loc in locs:
        assert f"{loc:.4f}" in summary
    assert locs[1] - locs[0] > 9


def test_fit_summary_is_a_short_table_for_any_dimension(tmp_path, capsys):
    """D=8, full covariance: one line per component, each short, not 2,000 characters."""
    rng = np.random.default_rng(5)
    rows = np.vstack([rng.normal(c * 5.0, 1.0, (200, 8)) for c in range(2)])
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"x": r.tolist()}) + "\n" for r in rows))
    out = tmp_path / "p.json"
    args = ["fit", "--data", str(tmp_path / "d.jsonl"), "--out", str(out), "-k", "2"]
    assert trainer_main([*args, "--covariance", "full"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("fit: K=2 D=8 covariance full") and lines[0].endswith(str(out))
    assert lines[1].split() == ["k", "weight", "loc", "sd"] and len(lines) == 5
    assert lines[4] == "left out: none of the 400 points"
    assert all(len(line) < 100 for line in lines[1:]) and "(+4)" in lines[2]
    model = ModelParams.loads(out.read_bytes())
    tril = np.asarray(model.mixture.scale)[0]
    sd = np.sqrt(np.diag(tril @ tril.T))
    assert f"{sd[0]:.4f}, {sd[1]:.4f}" in lines[2]


@pytest.mark.parametrize(
    ("scale", "covariance", "expected"),
    [
        (2.0, "tied-diag", [[2.0, 2.0], [2.0, 2.0]]),
        ([1.0, 3.0], "spherical", [[1.0, 1.0], [3.0, 3.0]]),
        ([[1.0, 2.0], [3.0, 4.0]], "diag", [[1.0, 2.0], [3.0, 4.0]]),
        ([[3.0, 0.0], [4.0, 0.0]], "tied", [[3.0, 4.0], [3.0, 4.0]]),
    ],
)
def test_standard_deviations_of_every_covariance_form(scale, covariance, expected):
    assert_allclose(_standard_deviations(np.asarray(scale), covariance, 2, 2), expected)


def test_fit_summary_counts_the_points_left_out(tmp_path, capsys):
    """Old Faithful plus one eruption with waiting = 1e9: the fit leaves it out and says so,
    and its locations stay where the clean fit's are."""
    faithful = pathlib.Path(__file__).resolve().parents[3] / "bench" / "data" / "faithful.csv"
    glitchy = tmp_path / "glitchy.csv"
    glitchy.write_text(faithful.read_text() + "3.000,1000000000\n")
    outs = {}
    for name, data in (("clean", faithful), ("glitchy", glitchy)):
        out = tmp_path / f"{name}.json"
        args = ["fit", "--data", str(data), "--out", str(out), "--covariance", "diag"]
        assert trainer_main([*args, "--restarts", "20"]) == 0
        outs[name] = ModelParams.loads(out.read_bytes())
        last = capsys.readouterr().out.splitlines()[-1]
    assert last == "left out: 1 of the 273 points (1 beyond_fence); gmm-classify still serves them"
    assert outs["glitchy"].metadata.extra["excluded_points"] == {
        "beyond_fence": 1,
        "implausible": 0,
    }
    clean, glitched = outs["clean"].mixture, outs["glitchy"].mixture
    assert_allclose(glitched.locs, clean.locs, atol=0.05)
