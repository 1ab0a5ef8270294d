"""Collapsed NUTS over the globals, on the tutorial's data (its MCMC section)."""

from __future__ import annotations

import jax
import numpy as np

from mixture.params import seed_priors
from mixture.posterior import posterior_nuts


def test_nuts_on_the_tutorial_data():
    post = posterior_nuts(
        [0.0, 1.0, 10.0, 11.0, 12.0],
        jax.random.PRNGKey(2),
        2,
        priors=seed_priors(1),
        num_warmup=100,
        num_samples=200,
    )
    assert post.samples["locs"].shape == (200, 2, 1)
    assert post.samples["weights"].shape == (200, 2)
    np.testing.assert_allclose(post.samples["weights"].sum(1), 1.0, rtol=1e-5)
    assert set(post.summary) == {"weights", "locs", "scale"}
    assert {"mean", "std", "median", "5.0%", "95.0%", "n_eff", "r_hat"} <= set(post.summary["locs"])
    assert isinstance(post.divergences, int) and post.n_points == 5
    # Both modes of the likelihood are near 0.5 and 11 (label-free): the samples sit there.
    low, high = np.sort(post.samples["locs"][:, :, 0], axis=1).mean(0)
    assert -2 < low < 3 and 9 < high < 13
