"""A fit sharded over several devices gives the one-device fit (2 forced host devices); the
trainer's own choice never shards over CPU devices (XLA's batched LAPACK kernels can deadlock
on their shared thread pool)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from numpy.testing import assert_allclose

from tests.conftest import ROOT, jax_subprocess_env

SCRIPT = r"""
import json, sys
import jax, numpy as np
from mixture.fit import FitConfig, FitPrograms, fit_map
from mixture.fit_programs import point_mesh

assert len(jax.devices()) == 2, jax.devices()
rng = np.random.default_rng(0)
x = np.concatenate([rng.normal(0, 1, (2500, 2)), rng.normal([5, 2], 0.7, (1501, 2))])
x[::97, 1] = np.nan  # missing coordinates: diagonal types count them out per coordinate
out = {}
for covariance in ("diag", "full"):
    config = FitConfig(2, covariance, n_init=8, n_best=2)
    one = fit_map(x, jax.random.PRNGKey(0), config, programs=FitPrograms())
    mesh = point_mesh()
    two = fit_map(x, jax.random.PRNGKey(0), config, programs=FitPrograms(mesh=mesh))
    # The steps ran with the points split over both devices.
    out[covariance] = {
        name: {"losses": r.losses.tolist(), "locs": r.params.locs.tolist(), "n": r.n_points}
        for name, r in (("one", one), ("two", two))
    }
print(json.dumps(out))
"""


def _on_two_devices(script: str) -> subprocess.CompletedProcess:
    """Runs `script` in a new Python process with two forced host devices."""
    env = jax_subprocess_env()
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
    ).strip()
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )


def test_a_fit_sharded_over_two_devices_is_the_one_device_fit():
    done = _on_two_devices(SCRIPT)
    out = json.loads(done.stdout.strip().splitlines()[-1])
    for covariance, fits in out.items():
        one, two = fits["one"], fits["two"]
        assert one["n"] == two["n"] and len(one["losses"]) == len(two["losses"]), covariance
        assert_allclose(two["losses"], one["losses"], rtol=1e-6)
        assert_allclose(np.asarray(two["locs"]), np.asarray(one["locs"]), rtol=1e-5, atol=1e-5)


DEVICES_SCRIPT = r"""
import jax
from mixture.fit import default_programs, use_fit_devices

assert len(jax.devices()) == 2, jax.devices()
print(use_fit_devices(0), use_fit_devices(2), default_programs().mesh is None)
"""


def test_the_trainer_never_shards_over_cpu_devices():
    done = _on_two_devices(DEVICES_SCRIPT)
    assert done.stdout.split() == ["1", "1", "True"]
    assert "fitting on one of 2 CPU devices" in done.stderr


def test_one_device_or_a_mesh_of_one_shards_nothing():
    import jax

    from mixture.fit import default_programs, use_fit_devices
    from mixture.fit_programs import FitPrograms, point_mesh

    assert FitPrograms(mesh=point_mesh(jax.devices()[:1])).mesh is None
    try:
        cpu = jax.local_devices()[0].platform == "cpu"
        assert use_fit_devices(0) == (1 if cpu else len(jax.local_devices()))
        assert (default_programs().mesh is None) == (cpu or len(jax.local_devices()) == 1)
    finally:
        use_fit_devices(1)
    assert default_programs().mesh is None
