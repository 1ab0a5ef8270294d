"""The fit through the program cache (mixture.fit.use_program_cache): the same results as traced
programs, and a new process loads the programs instead of building the model and tracing."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from numpy.testing import assert_allclose

from mixture import fit
from mixture.fit import FitConfig, fit_compilations, fit_map, use_program_cache
from tests.conftest import ROOT, jax_subprocess_env

pytestmark = pytest.mark.unit

CONFIG = FitConfig(n_components=2, covariance="full", n_init=8, n_best=2)

# Fits a cold model and refits it warm (EM steps) on new points, then prints what it got, how
# many fit programs it prepared, and whether it built the model (FitPrograms.program) to trace them.
SCRIPT = """
import json, sys
import jax, numpy as np
from mixture import fit
from mixture.fit import FitConfig, fit_map, use_program_cache
use_program_cache(sys.argv[1])
config = FitConfig(n_components=2, covariance="full", n_init=8, n_best=2)
rng = np.random.default_rng(0)
def points(n):
    return np.concatenate([rng.normal(0, 1, (n, 2)), rng.normal(5, 1, (n, 2)) @ [[1, .5], [0, 1]]])
cold = fit_map(points(300), jax.random.PRNGKey(0), config)
warm = fit_map(points(300), jax.random.PRNGKey(1), config, warm_start=cold.params)
print(json.dumps({
    "locs": [cold.params.locs.tolist(), warm.params.locs.tolist()],
    "steps": [cold.n_steps, warm.n_steps],
    "warm_alone": len(warm.candidate_losses) == 1,
    "compilations": fit.fit_compilations(),
    "built": len(fit.default_programs()._built),
    "numpyro": "numpyro" in sys.modules,
}))
"""


@pytest.fixture
def no_program_cache():
    yield
    use_program_cache(None)


def _run(directory: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, directory],
        cwd=ROOT,
        env=jax_subprocess_env(),
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_new_process_loads_the_fit_programs_and_gets_the_same_fit(tmp_path):
    first = _run(str(tmp_path))
    assert first["built"] == 1
    assert len(list(tmp_path.glob("*-fit.*.jaxexport"))) >= 4  # candidates, init, chunks, winner
    second = _run(str(tmp_path))
    assert second["built"] == 0, "the second process traced the model again"
    assert first["numpyro"] and not second["numpyro"], "NumPyro imported without tracing"
    # Loaded programs still count: the trainer's compilation metric sees every program prepared.
    assert second["compilations"] == first["compilations"]
    assert second["steps"] == first["steps"]
    # The refit took EM's steps (the warm start won and settled in a few steps).
    assert first["warm_alone"] and first["steps"][1] <= 10
    assert_allclose(np.asarray(second["locs"]), np.asarray(first["locs"]), rtol=1e-6)


@pytest.mark.usefixtures("no_program_cache")
def test_fit_through_the_cache_matches_the_traced_fit(tmp_path):
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(0, 1, (200, 2)), rng.normal(4, 0.5, (200, 2))])
    traced = fit_map(x, jax.random.PRNGKey(2), CONFIG)
    use_program_cache(tmp_path)
    before = fit_compilations()
    cached = fit_map(x, jax.random.PRNGKey(2), CONFIG)
    again = fit_map(x, jax.random.PRNGKey(2), CONFIG)
    assert fit_compilations() > before  # traced once more for export, then never again:
    after = fit_compilations()
    fit_map(x[::-1].copy(), jax.random.PRNGKey(4), CONFIG)
    assert fit_compilations() == after
    for result in (cached, again):
        assert result.n_steps == traced.n_steps
        assert_allclose(result.params.locs, traced.params.locs, rtol=1e-5, atol=1e-6)
        assert_allclose(result.params.scale, traced.params.scale, rtol=1e-5, atol=1e-6)


@pytest.mark.usefixtures("no_program_cache")
def test_unwritable_directory_warns_and_fits_without_the_cache(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    use_program_cache(blocker / "programs")
    assert fit.default_programs().cache is None  # nothing exported that no process could read
    assert "traced programs not stored" in caplog.text
    x = np.random.default_rng(5).normal(size=(300, 2)) + np.repeat([[0, 0], [6, 6]], 150, axis=0)
    assert np.isfinite(fit_map(x, jax.random.PRNGKey(0), CONFIG).final_loss)


@pytest.mark.usefixtures("no_program_cache")
def test_other_codes_programs_are_pruned(tmp_path):
    """Files of other code (another salt) unused for a day are deleted at start-up; this
    code's files stay."""
    use_program_cache(tmp_path)
    ours = fit.default_programs().cache
    assert ours is not None
    mine = ours.path("fit.winner.x", "0" * 64)
    other = tmp_path / "0123456789ab-fit.winner.x-00000000000000000000000000000000.jaxexport"
    recent = tmp_path / "ba9876543210-fit.winner.x-00000000000000000000000000000000.jaxexport"
    for path in (mine, other, recent):
        path.write_bytes(b"x")
    day_ago = other.stat().st_mtime - 2 * 86400
    os.utime(mine, (day_ago, day_ago))
    os.utime(other, (day_ago, day_ago))
    use_program_cache(tmp_path)
    assert mine.exists() and recent.exists() and not other.exists()


def test_configurations_that_differ_in_the_drivers_fields_share_their_programs():
    """Tolerances, step caps and the candidates optimised steer the Python driver only: the
    programs are built from PROGRAM_FIELDS (every `config.<field>` that fit_programs reads),
    so such configurations compile nothing new."""
    import ast
    import dataclasses

    from mixture import fit_programs
    from tests.conftest import parse_source

    tree = parse_source(pathlib.Path(fit_programs.__file__).read_text())
    read = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "config"
    }
    assert read <= set(fit_programs.PROGRAM_FIELDS) | {"__class__"}, read
    x = np.random.default_rng(3).normal(size=(300, 2))
    config = FitConfig(2, "diag", n_init=6, n_best=2)
    first = fit_map(x, jax.random.PRNGKey(0), config)
    before = fit_compilations()
    loose = dataclasses.replace(config, tol=1e-3, warm_tol=1e-4, refit_tol=1e-2, em_max_steps=150)
    again = fit_map(x, jax.random.PRNGKey(0), loose)
    assert fit_compilations() == before
    assert again.n_points == first.n_points
    assert fit_programs.program_config(loose) == fit_programs.program_config(config)
