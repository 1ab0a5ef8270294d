"""One fit over two processes on localhost (JAX's multi-controller runtime, gloo collectives on
the CPU), each holding half of the window, gives the one-process fit."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from numpy.testing import assert_allclose

from support.harness import free_port
from tests.conftest import ROOT, jax_subprocess_env

SCRIPT = r"""
import json, sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
port, me = sys.argv[1], int(sys.argv[2])
jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=me)
import numpy as np
from mixture.fit import FitConfig, FitPrograms, fit_map
from mixture.fit_programs import point_mesh

rng = np.random.default_rng(0)
x = np.concatenate([rng.normal(0, 1, (2500, 2)), rng.normal([5, 2], 0.7, (1501, 2))])
x = x[rng.permutation(len(x))]
x[::97, 1] = np.nan  # missing coordinates, counted per coordinate over both processes
part = x[:1700] if me == 0 else x[1700:]  # unequal parts
def summary(r):
    return {"losses": r.losses.tolist(), "locs": r.params.locs.tolist(),
            "scale": np.asarray(r.params.scale).tolist(), "n": r.n_points}

out = {}
# Every point ranks the starts (as one process does), then a sample each process draws its
# share of (score_points < N).
for name, score in (("whole", 16384), ("sampled", 1024)):
    config = FitConfig(2, "diag", n_init=8, n_best=2, score_points=score)
    programs = FitPrograms(mesh=point_mesh())
    out[name] = summary(fit_map(part, jax.random.PRNGKey(0), config, programs=programs))
    if me == 0:  # the reference: the whole window in this one process
        one = fit_map(x, jax.random.PRNGKey(0), config, programs=FitPrograms())
        out[name]["one"] = summary(one)
print(json.dumps(out))
"""


def test_a_fit_over_two_processes_is_the_one_process_fit():
    port = str(free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SCRIPT, port, str(me)],
            cwd=ROOT,
            env=jax_subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for me in (0, 1)
    ]
    outs = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=300)
            assert p.returncode == 0, stderr[-2000:]
            outs.append(json.loads(stdout.strip().splitlines()[-1]))
    finally:  # a process left waiting in a collective for one that failed
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    first, second = outs
    for name in ("whole", "sampled"):
        one = first[name].pop("one")
        both = first[name]
        assert both == second[name]  # every process holds the same model
        assert both["n"] == one["n"] == 4001
        if name == "whole":  # the same starts: the same steps
            assert len(both["losses"]) == len(one["losses"])
            assert_allclose(both["losses"], one["losses"], rtol=1e-6)
        else:  # other samples rank the starts: the same optimum
            assert_allclose(both["losses"][-1], one["losses"][-1], rtol=1e-6)
        order = np.argsort(np.asarray(both["locs"])[:, 0])
        one_order = np.argsort(np.asarray(one["locs"])[:, 0])
        assert_allclose(
            np.asarray(both["locs"])[order],
            np.asarray(one["locs"])[one_order],
            rtol=1e-4,
            atol=1e-4,
        )
        assert_allclose(
            np.asarray(both["scale"])[order], np.asarray(one["scale"])[one_order], rtol=1e-4
        )
