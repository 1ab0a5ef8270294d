"""The fit's steps: k-means++ seeds, losses summed over blocks of points, EM-preconditioned
cold fits reaching Adam's optimum in a fraction of the steps."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy.testing import assert_allclose
from sklearn.mixture import GaussianMixture

from mixture import fit_data
from mixture.evaluate import log_likelihood
from mixture.fit import FitConfig, FitPrograms, distinct_best, fit_map, point_block
from mixture.fit_programs import compiler_options, initial_candidates, kmeans_plus_plus

pytestmark = pytest.mark.unit


def _clusters(n_per: int, centres: list[list[float]], spread: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(c, spread, (n_per, len(c))) for c in centres])


def test_kmeans_plus_plus_puts_one_seed_in_each_far_cluster():
    """Three tight clusters far apart: each k-means++ draw takes one seed from each (a
    uniform draw puts two in one cluster a good share of the time)."""
    x = jnp.asarray(_clusters(100, [[0, 0], [50, 0], [0, 50]], 0.1, 0), jnp.float32)
    keys = jax.random.split(jax.random.PRNGKey(0), 50)
    seeds = np.asarray(jax.vmap(lambda k: kmeans_plus_plus(k, x, 300, 3))(keys))
    cluster = np.rint(seeds / 50).astype(int) @ [1, 2]  # 0, 1 or 2
    assert all(sorted(c) == [0, 1, 2] for c in cluster)


def test_kmeans_plus_plus_never_seeds_from_padding_and_survives_repeated_values():
    """Padding rows (beyond n_valid) are never drawn, even far away; all-equal points (zero
    distances everywhere) fall back to uniform draws instead of NaN."""
    padded = np.zeros((256, 1), np.float32)
    padded[:10] = 3.0
    padded[10:] = 1e6  # padding, far from every point
    keys = jax.random.split(jax.random.PRNGKey(1), 20)
    seeds = np.asarray(jax.vmap(lambda k: kmeans_plus_plus(k, jnp.asarray(padded), 10, 4))(keys))
    assert_allclose(seeds, 3.0)


def test_kmeans_plus_plus_draws_in_proportion_to_squared_distance():
    """The second seed is drawn with probability proportional to its squared distance to the
    first, across the blocks the two-level draw takes (points 0..5 and two padding rows: blocks
    of four)."""
    padded = np.zeros((8, 1), np.float32)
    padded[:6, 0] = np.arange(6)
    keys = jax.random.split(jax.random.PRNGKey(3), 6000)
    seeds = np.asarray(jax.vmap(lambda k: kmeans_plus_plus(k, jnp.asarray(padded), 6, 2))(keys))
    second = seeds[seeds[:, 0, 0] == 0.0, 1, 0]
    assert len(second) > 500
    expected = np.arange(6.0) ** 2 / (np.arange(6.0) ** 2).sum()
    observed = np.bincount(second.astype(int), minlength=6) / len(second)
    assert_allclose(observed, expected, atol=0.05)


def test_random_init_is_the_tutorials_uniform_draw():
    """init="random" draws locations uniformly from the valid points, as the tutorial does."""
    x = jnp.arange(8.0)[:, None]
    values = initial_candidates(jax.random.PRNGKey(2), x, 8, 200, 2, "tied-diag", "random")
    locs = np.asarray(values["locs"])[..., 0]
    assert set(np.unique(locs)) == set(range(8))
    assert_allclose(np.asarray(values["weights"]), 0.5)


@pytest.mark.parametrize("covariance", ["diag", "full"])
def test_losses_summed_over_blocks_equal_the_whole_windows(monkeypatch, covariance):
    """A window summed in blocks of points (the priors' terms counted once) takes the same
    steps as the whole window at once."""
    x = _clusters(700, [[0, 0], [6, 2]], 1.0, 3)  # pads to 1,536 points
    config = FitConfig(
        2, covariance, n_init=8, n_best=2, em_max_steps=6, warm_tol=0.0, em_prune_steps=1e9
    )
    whole = fit_map(x, jax.random.PRNGKey(0), config, programs=FitPrograms())
    monkeypatch.setattr(fit_data, "POINT_BLOCK", 256)
    assert point_block(1536) == 256
    blocked = fit_map(x, jax.random.PRNGKey(0), config, programs=FitPrograms())
    assert_allclose(blocked.losses, whole.losses, rtol=2e-6)

    # Candidates reaching one optimum as relabelings of each other may swap the winner.
    def by_location(locs: np.ndarray) -> np.ndarray:
        return locs[np.argsort(locs[:, 0])]

    assert_allclose(
        by_location(blocked.params.locs), by_location(whole.params.locs), rtol=1e-4, atol=1e-5
    )


def test_point_blocks_divide_every_padded_size():
    for n in (1, 300, 5_000, 65_537, 100_000, 1_000_000, 2**20 + 1, 10_000_000):
        size = fit_data.padded_size(n)
        block = point_block(size)
        assert size % block == 0 and block <= fit_data.POINT_BLOCK
        assert 3 * block >= min(size, fit_data.POINT_BLOCK)  # see padded_size
    # Many values per point (candidates x K x D): smaller blocks, never under MIN_BLOCK.
    assert point_block(2**20, 100 * 4 * 8) == 512
    assert point_block(2**20, 10**9) == fit_data.MIN_BLOCK


def test_distinct_starts_are_optimised_before_copies():
    """k-means moves many seeds to one solution: n_best takes one of each loss first."""
    losses = np.array([5.0, 3.0, 3.0, 3.0 + 1e-9, 4.0, np.inf, 3.5])
    assert distinct_best(losses, 3).tolist() == [1, 6, 4]
    assert distinct_best(losses, 6).tolist() == [1, 6, 4, 0, 2, 3]
    assert distinct_best(np.full(3, np.inf), 2).tolist() == [0, 1]


def test_k_means_refined_starts_keep_the_better_optimum():
    """Two components for three clusters: k-means' split is not the mixture's best; the fit
    still finds the better optimum (scikit-learn's, by BIC)."""
    rng = np.random.default_rng(1)
    x = np.concatenate(
        [
            rng.multivariate_normal([0, 0], np.eye(2), 400),
            rng.multivariate_normal([6, 0], [[1, 0], [0, 2]], 300),
            rng.multivariate_normal([3, 6], np.eye(2) * 0.5, 300),
        ]
    )
    ours = fit_map(x, jax.random.PRNGKey(0), FitConfig(2, "diag"))
    sk = GaussianMixture(2, covariance_type="diag", n_init=5, random_state=0).fit(x)
    assert log_likelihood(x, ours.params).mean() >= sk.score(x) - 1e-4


def test_cold_em_reaches_adams_optimum_in_a_fraction_of_the_steps():
    x = _clusters(500, [[0, 0], [5, 1], [1, 6]], 1.0, 4)
    em = FitConfig(3, "diag", n_init=10, n_best=2)
    adam = dataclasses.replace(em, cold_em=False)
    by_em = fit_map(x, jax.random.PRNGKey(5), em)
    by_adam = fit_map(x, jax.random.PRNGKey(5), adam)
    assert by_em.converged and by_adam.converged
    assert by_em.n_steps * 5 <= by_adam.n_steps
    assert_allclose(by_em.final_loss, by_adam.final_loss, rtol=1e-5)
    assert_allclose(
        log_likelihood(x, by_em.params).mean(), log_likelihood(x, by_adam.params).mean(), atol=1e-4
    )
    assert len(by_em.candidate_losses) == 2 and by_em.n_points == len(x)
    assert by_em.points_per_second == pytest.approx(len(x) / by_em.seconds)


def test_the_fit_compiles_without_cpu_library_fusions():
    """On CPU the fit's programs turn XLA's YNNPACK fusions off (they ran its reductions slower);
    the option must be one this XLA accepts, or none is passed."""
    options = compiler_options()
    if jax.default_backend() == "cpu":
        assert options == {"xla_cpu_experimental_ynn_fusion_type": ""}
    else:
        assert options is None
