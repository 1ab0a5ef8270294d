"""Two `gmm-trainer fit` processes on localhost, each given its part of a window with glitches,
fit the model one process fits to the whole window: the same points fenced and trimmed, the
same parameters (JAX's multi-controller runtime, gloo collectives on the CPU)."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from numpy.testing import assert_allclose

from support.harness import free_port
from tests.conftest import ROOT
from trainer.cli import main as trainer_main

FIT = ["-k", "2", "--covariance", "full", "--restarts", "6"]


def _csv(path: pathlib.Path, rows: np.ndarray) -> pathlib.Path:
    lines = ["eruptions,waiting"] + [f"{float(a)!r},{float(b)!r}" for a, b in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def _run(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "trainer.cli", "fit", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(procs: list[subprocess.Popen]) -> list[tuple[int, str, str]]:
    done = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=300)
            done.append((p.returncode, stdout, stderr))
    finally:  # a process left waiting in a collective for one that failed
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    return done


def _window() -> np.ndarray:
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [rng.normal([2, 55], [0.3, 6], (100, 2)), rng.normal([4.4, 80], [0.4, 6], (172, 2))]
    )
    glitches = [[1e6, 70], [3, -5e5], [90, 60], [3.5, 400]]
    x[rng.choice(len(x), len(glitches), replace=False)] = glitches
    return x[rng.permutation(len(x))]


def test_two_trainer_processes_fit_the_one_process_model(tmp_path):
    x = _window()
    whole = _csv(tmp_path / "whole.csv", x)
    parts = [_csv(tmp_path / "a.csv", x[:90]), _csv(tmp_path / "b.csv", x[90:])]
    port = str(free_port())
    across = ["--processes", "2", "--coordinator", f"127.0.0.1:{port}"]
    outs = [tmp_path / f"two-{i}.json" for i in (0, 1)]
    procs = [
        _run(["--data", str(part), *FIT, *across, "--process-id", str(i), "--out", str(out)])
        for i, (part, out) in enumerate(zip(parts, outs, strict=True))
    ]
    procs.append(_run(["--data", str(whole), *FIT, "--out", str(tmp_path / "one.json")]))
    (rc0, out0, err0), (rc1, _, err1), (rc, out, err) = _finish(procs)
    assert (rc0, rc1, rc) == (0, 0, 0), (err0[-2000:], err1[-2000:], err[-2000:])
    assert "process 1 of 2: 182 of 272 points; process 0 writes the model" in err1
    assert not outs[1].exists()
    two = json.loads(outs[0].read_text())
    one = json.loads((tmp_path / "one.json").read_text())
    # Both rules acted, on the same points: 3 glitches beyond the fence, 1 trimmed.
    assert one["metadata"]["excluded_points"] == {"beyond_fence": 3, "implausible": 1}
    assert two["metadata"]["excluded_points"] == one["metadata"]["excluded_points"]
    assert two["metadata"]["n_points"] == one["metadata"]["n_points"] == 272
    assert two["metadata"]["n_steps"] == one["metadata"]["n_steps"]
    assert_allclose(two["metadata"]["final_loss"], one["metadata"]["final_loss"], rtol=1e-6)
    for name in ("weights", "locs", "scale_tril"):
        assert_allclose(two[name], one[name], rtol=1e-6, atol=1e-9, err_msg=name)
    assert "n=272" in out0 and "n=272" in out
    assert "(3 beyond_fence, 1 implausible)" in out0


def test_a_part_that_cannot_be_read_fails_every_process(tmp_path):
    ok = _csv(tmp_path / "a.csv", _window()[:100])
    port = str(free_port())
    common = [*FIT, "--processes", "2", "--coordinator", f"127.0.0.1:{port}"]
    procs = [
        _run(["--data", str(ok), *common, "--process-id", "0", "--out", str(tmp_path / "o")]),
        _run(["--data", str(tmp_path / "missing.csv"), *common, "--process-id", "1"]),
    ]
    (rc0, _, err0), (rc1, _, err1) = _finish(procs)
    assert (rc0, rc1) == (2, 2)
    assert "gmm-trainer: error: process 1's part of the window is not valid" in err0
    assert "gmm-trainer: error: cannot read" in err1 and "missing.csv" in err1
    assert not (tmp_path / "o").exists()


def test_processes_given_different_columns_or_options_all_fail(tmp_path):
    """Parts whose CSV columns are in another order (or options that differ) would be mixed
    up: every process refuses, before any fit."""
    x = _window()[:100]
    a = _csv(tmp_path / "a.csv", x[:50])
    b = tmp_path / "b.csv"
    b.write_text("waiting,eruptions\n" + "".join(f"{float(w)!r},{float(e)!r}\n" for e, w in x[50:]))
    port = str(free_port())
    common = [*FIT, "--processes", "2", "--coordinator", f"127.0.0.1:{port}"]
    procs = [
        _run(["--data", str(a), *common, "--process-id", "0", "--out", str(tmp_path / "o")]),
        _run(["--data", str(b), *common, "--process-id", "1"]),
    ]
    for rc, _, err in _finish(procs):
        assert rc == 2
        assert "the processes differ in fit options or data columns" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--processes", "0"], "--processes must be >= 1"),
        (["--processes", "2"], "--processes > 1 needs --coordinator"),
        (["--processes", "2", "--process-id", "2", "--coordinator", "h:1"], "--process-id must"),
        (["--processes", "2", "--coordinator", "h:1", "-k", "auto"], "--components auto runs"),
        (
            ["--processes", "2", "--process-id", "1", "--coordinator", "h:1", "--publish"],
            "--publish is process 0's",
        ),
    ],
)
def test_process_options_are_checked_first(tmp_path, capsys, extra, message):
    data = _csv(tmp_path / "a.csv", _window()[:50])
    assert trainer_main(["fit", "--data", str(data), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
