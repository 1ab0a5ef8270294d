"""The points cross to the device once, as their float64 values, and each residual is taken
there in float64: the same float32 residuals as numpy's float64 differences cast, whatever K,
with the buffers the points cross from reused safely across calls and threads."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from numpy.testing import assert_allclose

from mixture.classify import (
    CPU_COMPILER_OPTIONS,
    compiler_options,
    float64_words,
    make_classifier,
)
from mixture.params import MixtureParams

K, D = 4, 2
SHARED = MixtureParams(
    np.array([0.375, 0.625]), np.array([[0.4989], [10.9845]]), np.array([0.6514])
)


def random_case(rng: np.random.Generator) -> tuple[MixtureParams, np.ndarray]:
    """Locations and points at an offset up to 1e15 and a spread down to 1e-6, one component
    sometimes far from the rest, some points a few float64 steps from a location."""
    offset = rng.choice([-1.0, 0.0, 1.0]) * 10 ** rng.uniform(-3, 15)
    spread = 10 ** rng.uniform(-6, 6)
    locs = offset + spread * rng.normal(0, 3, (K, D))
    if rng.random() < 0.3:
        locs[0] = rng.normal() * 10 ** rng.uniform(-3, 15)
    x = offset + spread * rng.normal(0, 3, (64, D))
    x[:16] = locs[rng.integers(0, K, 16)] * (1 + rng.normal(size=(16, D)) * 1e-15)
    return MixtureParams(np.full(K, 1 / K), locs, np.ones(D)), x


def test_residuals_are_the_float64_differences_rounded_once():
    rng = np.random.default_rng(0)
    clf = make_classifier(K, D, max_batch=64)
    for _ in range(200):
        params, x = random_case(rng)
        got, observed = clf.residuals(x, clf.prepare(params))
        want = (x[None] - params.locs[:, None]).astype(np.float32)
        assert observed.all()
        # Equal to the bit, but for results below float32's normal range (flushed to 0 there).
        assert ((got == want) | (np.abs(want) < np.finfo(np.float32).tiny)).all()


def test_missing_coordinates_get_residual_zero():
    clf = make_classifier(K, D, max_batch=64)
    params, x = random_case(np.random.default_rng(1))
    x[3, 1] = np.nan
    got, observed = clf.residuals(x, clf.prepare(params))
    assert not observed[3, 1] and observed.sum() == x.size - 1
    assert (got[:, 3, 1] == 0).all()
    assert (got[:, 3, 0] == (x[3, 0] - params.locs[:, 0]).astype(np.float32)).all()


@pytest.mark.parametrize("k", [1, 3, 16])
def test_the_points_cross_as_b_x_d_float64_values_whatever_k(k):
    clf = make_classifier(k, D, max_batch=64)
    x = np.random.default_rng(2).normal(size=(50, D))
    words, _ = clf.device_input(x)
    assert words.dtype == np.uint32 and words.shape == (50, D, 2)
    assert words.nbytes == 50 * D * 8
    assert (words.view(np.float64)[..., 0] == x).all()
    assert (float64_words(x) == words).all()


def test_float32_and_strided_points_give_the_float64_results():
    clf = make_classifier(2, 1, max_batch=256)
    x = np.random.default_rng(3).normal(size=(300, 1)) * 5 + 6
    x32 = x.astype(np.float32)
    want = clf(x32.astype(np.float64), SHARED)
    for points in (x32, x32[:, 0], np.asfortranarray(x32)):
        got = clf(points, SHARED)
        assert np.array_equal(got.assignment, want.assignment)
        assert np.array_equal(got.probs, want.probs)
    strided = clf(x[::3], SHARED)
    assert np.array_equal(strided.probs, clf(np.ascontiguousarray(x[::3]), SHARED).probs)


def test_buffers_reused_across_batches_and_chunks_change_no_result():
    """Each thread's buffers are reused: a smaller batch after a larger one, several chunks in
    one call (rows past a batch are padding, whatever the last batch left there)."""
    clf = make_classifier(2, 1, sizes=(16, 64))
    prepared = clf.prepare(SHARED)
    rng = np.random.default_rng(4)
    batches = [rng.normal(size=n) * 6 + 5 for n in (64, 40, 10, 64, 1, 200)]
    fresh = [make_classifier(2, 1, sizes=(16, 64))(b, SHARED) for b in batches]
    for _ in range(2):
        for batch, want in zip(batches, fresh, strict=True):
            got = clf(batch, prepared)
            assert np.array_equal(got.assignment, want.assignment)
            assert np.array_equal(got.probs, want.probs)
            assert np.array_equal(got.log_likelihood, want.log_likelihood)
    assert clf.compilations == 2


def test_concurrent_calls_each_get_their_own_results():
    clf = make_classifier(2, 1, sizes=(16, 64, 256))
    clf.warmup()
    prepared = clf.prepare(SHARED)
    rng = np.random.default_rng(5)
    batches = [rng.normal(size=n) * 6 + 5 for n in (256, 200, 64, 17)]
    want = [clf(b, prepared) for b in batches]
    failures: list[str] = []

    def work(i: int) -> None:
        for _ in range(25):
            got = clf(batches[i], prepared)
            if not np.array_equal(got.probs, want[i].probs):
                failures.append(f"thread {i}")
                return

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    assert clf.compilations == 3 + 0  # sizes 16, 64, 256; D == 1 has no missing-value program


def test_cpu_programs_compute_log_likelihoods_once_with_no_ynnpack_reductions():
    """On a CPU: reductions are XLA's own loops (CPU_COMPILER_OPTIONS: YNNPACK's ran up to 10x
    slower at large batches), and the log-likelihoods are computed once, in a conditional,
    rather than inside each fusion that reads them."""
    assert compiler_options("cpu") == CPU_COMPILER_OPTIONS
    assert compiler_options("gpu") is None
    clf = make_classifier(2, 1, max_batch=1024)
    prepared = clf.prepare(SHARED)
    words, _ = clf.device_input(np.zeros(1024))
    clf(np.zeros(1024), prepared)
    text = clf._program.lower(words, prepared.device, clf._no_keys[1024]).compile().as_text()
    assert "__ynn" not in text
    assert "conditional(" in text
    assert_allclose(clf(np.array([0.5, 11.0]), prepared).probs.sum(1), 1.0, rtol=1e-6)


def test_padding_far_from_every_component_leaves_the_real_rows_alone():
    """Two components 1e-6 apart at 1e8 with spread 1e-12: a padding row of zeros would be
    ~1e20 spreads away, where float32 overflows. The one real row pads its batch of 16 and is
    classified as in a full batch."""
    params = MixtureParams(np.array([0.5, 0.5]), np.array([[1e8], [1e8 + 1e-6]]), np.array([1e-12]))
    clf = make_classifier(2, 1, max_batch=16)
    one = np.array([[1e8 + 1e-7]])
    got = clf(one, params)
    full = clf(np.repeat(one, 16, axis=0), params)
    assert np.isfinite(got.probs).all() and np.isfinite(got.log_likelihood).all()
    assert got.assignment[0] == full.assignment[0] == 0
    assert_allclose(got.probs[0], full.probs[0], rtol=1e-6)
    assert_allclose(got.log_likelihood[0], full.log_likelihood[0], rtol=1e-6)


def test_a_backend_without_float64_is_refused_with_its_name(monkeypatch):
    from mixture import classify

    monkeypatch.setattr(classify, "_platform", lambda: "tpu")
    with pytest.raises(ValueError, match="default backend here is 'tpu'"):
        make_classifier(K, D, max_batch=64)
