"""The static settings of a MAP fit (`FitConfig`): each distinct value compiles its own programs.

Pure data and checks; the fit (`mixture.fit`), its programs (`mixture.fit_programs`) and the
trainer's settings all read it. Nothing here reads the environment.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np

from mixture.covariance import DEFAULT_REG_COVAR, check_covariance

PriorsChoice = Literal["data", "seed"]
InitChoice = Literal["kmeans++", "random"]
INITS: tuple[str, ...] = ("kmeans++", "random")


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """Static settings of a fit (each distinct value compiles its own programs)."""

    n_components: int = 2
    #: One of mixture.covariance.COVARIANCES (aliases accepted).
    covariance: str = "tied-diag"
    #: Covariance floor, relative to each column's variance.
    reg_covar: float = DEFAULT_REG_COVAR
    priors: PriorsChoice = "data"
    #: How each candidate's locations are drawn from the data: "kmeans++" (k-means++ seeding,
    #: the plain form of scikit-learn's greedy one: each next location drawn with probability
    #: proportional to the squared distance to the nearest one drawn so far, then moved by
    #: kmeans_steps of Lloyd's k-means, so starts rarely put two components on one cluster,
    #: the saddles slow EM runs crawl away from) or "random" (uniformly, the tutorial's).
    init: InitChoice = "kmeans++"
    #: Random initial candidates, all scored in one vmapped pass of the loss.
    n_init: int = 100
    #: With init "kmeans++": Lloyd's k-means steps that move a cold fit's candidates (on the
    #: scoring sample) before they are scored, as scikit-learn starts EM from k-means: EM then
    #: starts near an optimum. Not for refits (unless exploring): their warm start is near one.
    kmeans_steps: int = 10
    #: Candidates are scored on at most this many points (drawn at random from a bigger window):
    #: ranking starts needs no more, and on 1M points scoring 100 candidates on all of them
    #: cost several times the whole optimisation. The winners are then optimised on every point.
    score_points: int = 16384
    #: A refit ranks its candidates on fewer points: it asks only whether a start beats the
    #: current model by far (ranking 100 candidates on 16,384 points cost more than the refit;
    #: on 4,096 still half of a 1-D refit of 100k points).
    refit_score_points: int = 1024
    #: The best-scoring n_best candidates are optimised together (vmapped) and the lowest final
    #: loss wins: one start can settle in a worse optimum when K >= 3.
    n_best: int = 4
    learning_rate: float = 0.1
    #: Starting step size when the warm start wins (and alone is optimised): from near the
    #: optimum, Adam's first steps (each of about the step size in every coordinate) would
    #: otherwise kick the parameters away. The new window's optimum lies about 1/sqrt(N) from
    #: the last one (standardised units), so the step is warm_step_points / sqrt(N), at most
    #: warm_learning_rate: 0.003 at 1M points (measured: 10 steps of 0.01 there left the D=8
    #: full refit 1e-3 nats per point short of scikit-learn's, 20 steps of 0.003 1e-5).
    warm_learning_rate: float = 0.01
    warm_step_points: float = 3.0
    b1: float = 0.8
    b2: float = 0.99
    #: Adam's step size halves every this many steps (down to 1e-3 of the start): a fixed step
    #: keeps Adam circling the optimum at the step's own scale, so the loss never settles.
    lr_half_life_steps: int = 100
    #: Stop when the mean loss of a chunk changes by less than tol * max(1, |loss|).
    tol: float = 1e-6
    #: A candidate behind the best by more than prune_chunks times its own last improvement
    #: (it would need that many more chunks at its present rate just to draw level) is out of
    #: the running: the fit no longer waits for it to settle. Slow, hopeless candidates (a
    #: component sliding towards zero weight) otherwise held cold fits for thousands of steps.
    prune_chunks: float = 10.0
    chunk_steps: int = 25
    min_steps: int = 50
    #: A refit that starts from the current model (the trainer's steady state) is already near
    #: its optimum: it checks every warm_chunk_steps, from warm_min_steps, and stops when the
    #: mean loss per point changes by less than warm_tol nats between checks (scikit-learn's
    #: EM stops at 1e-3 per point per iteration).
    warm_chunk_steps: int = 5
    warm_min_steps: int = 10
    warm_tol: float = 1e-5
    #: A refit whose warm start wins takes EM-preconditioned steps (mixture.precondition)
    #: instead of Adam's: a few passes instead of 20-30. Checked after em_chunk_steps (>= 2),
    #: then after one step more, then every em_chunk_steps, stopping when the last step changed
    #: the loss by less than refit_tol nats per point, or after em_max_steps.
    warm_em: bool = True
    em_chunk_steps: int = 2
    em_max_steps: int = 200
    #: Such a refit stops once a step changed the loss by less than refit_tol nats per point:
    #: scikit-learn's rule for EM (its tol, 1e-3 per point between iterations), measured the
    #: same way (after two steps, the first one's change; after three, the second's: as many
    #: passes as scikit-learn's EM takes to stop). From a warm start EM's later steps
    #: gain far less than that (measured at D=8, 100k and 1M points: step 2 gained 1e-6 to 3e-7
    #: nats per point): the refit ends within about 1e-6 of the optimum it converges to.
    refit_tol: float = 1e-3
    #: Cold fits take EM-preconditioned steps too (all n_best candidates together), checked
    #: every cold_em_chunk_steps (>= 2): a candidate stops holding the fit once its last step
    #: changed the loss by less than warm_tol nats per point, or once it is behind the best by
    #: more than em_prune_steps times its last steps' gain (it would not draw level at that
    #: rate). False: Adam's steps, as the tutorial takes them.
    cold_em: bool = True
    cold_em_chunk_steps: int = 2
    em_prune_steps: float = 5.0
    max_steps: int = 5000

    def __post_init__(self) -> None:
        object.__setattr__(self, "covariance", check_covariance(self.covariance))
        if (
            min(self.n_components, self.n_init, self.n_best, self.score_points) < 1
            or self.refit_score_points < 1
        ):
            raise ValueError(
                "n_components, n_init, n_best, score_points and refit_score_points must be >= 1"
            )
        if not (self.em_prune_steps > 0 and self.prune_chunks > 0):
            raise ValueError(
                "em_prune_steps and prune_chunks must be > 0, got "
                f"{self.em_prune_steps} and {self.prune_chunks}"
            )
        if not (self.refit_tol >= 0 and self.warm_tol >= 0 and self.tol >= 0):
            raise ValueError(
                f"tol, warm_tol and refit_tol must be >= 0, got {self.tol}, {self.warm_tol} and "
                f"{self.refit_tol}"
            )
        if self.kmeans_steps < 0:
            raise ValueError(f"kmeans_steps must be >= 0, got {self.kmeans_steps}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        if self.reg_covar < 0:
            raise ValueError(f"reg_covar must be >= 0, got {self.reg_covar}")
        if not 2 <= self.cold_em_chunk_steps <= self.em_max_steps:
            raise ValueError(
                "cold_em_chunk_steps must be >= 2 and at most em_max_steps, got "
                f"{self.cold_em_chunk_steps} and {self.em_max_steps}"
            )
        if not 2 <= self.em_chunk_steps <= self.em_max_steps:
            raise ValueError(
                "em_chunk_steps must be >= 2 and at most em_max_steps, got "
                f"{self.em_chunk_steps} and {self.em_max_steps}"
            )
        if min(self.chunk_steps, self.max_steps, self.warm_chunk_steps) < 1:
            raise ValueError("chunk_steps, warm_chunk_steps and max_steps must be >= 1")


def warm_step(config: FitConfig, n_points: int) -> float:
    """Adam's starting step size for a refit of n_points from a warm start that scored best."""
    return min(config.warm_learning_rate, config.warm_step_points / np.sqrt(n_points))
