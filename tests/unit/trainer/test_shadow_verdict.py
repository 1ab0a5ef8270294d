"""A candidate's shadow verdict end to end, without a broker: per-record log p(x) of both
models scored by the workers (`stream_app.shadow.compare`), their reports through `shadow`
events, the trainer's tally and `Trainer.judge_candidate`, with the publisher faked.

One glitch record (x = 1e9) among a worker's records does not decide.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt

import numpy as np
import pytest

from mixture.classify import Classification
from mixture.params import FitMetadata, MixtureParams, ModelParams
from stream_app.shadow import compare
from trainer.cycle import Trainer
from trainer.events import ShadowTally
from trainer.metrics import TrainerMetrics
from trainer.settings import TrainerSettings
from wire.event import Event
from wire.shadow_report import ShadowReport, model_digest

RECORDS = 5000  # GMM_SHADOW_RECORDS' default
STREAM = np.random.default_rng(1).normal(0.0, 1.0, RECORDS)  # the stream: N(0, 1)
GLITCH = 1e9


def model(version: int, sd: float) -> ModelParams:
    fitted = dt.datetime.now(dt.UTC).isoformat()
    return ModelParams(
        version, MixtureParams([1.0], [[0.0]], [sd]), FitMetadata(fitted_at=fitted, n_points=1)
    )


def classification(x: np.ndarray, sd: float) -> Classification:
    """One component N(0, sd^2): log p(x) in float32, as a worker's classifier gives it."""
    log_p = -0.5 * np.log(2 * np.pi) - np.log(sd) - 0.5 * (x / sd) ** 2
    n = x.size
    return Classification(np.zeros(n, np.int32), np.ones((n, 1)), log_p.astype(np.float32))


class FakePublisher:
    def __init__(self) -> None:
        self.withdrawn: list[int] = []
        self.published: list[ModelParams] = []

    async def withdraw_candidate(self, version: int) -> None:
        self.withdrawn.append(version)

    async def publish(self, candidate: ModelParams, published_by: str, **_: object):
        promoted = dataclasses.replace(candidate, version=candidate.version + 1)
        self.published.append(promoted)
        return promoted


def judge(candidate_sd: float, served_sd: float, glitch: float | None):
    """Two workers score candidate 2 (N(0, candidate_sd^2)) beside served 1 on half the stream
    each, the second with `glitch` among its records; the trainer judges their reports.
    Returns what it did, its events, the publisher and the plain mean difference."""
    trainer = Trainer(TrainerSettings.from_env({"GMM_PROMOTION": "shadow"}), TrainerMetrics())
    trainer.publisher = publisher = FakePublisher()  # type: ignore[assignment]
    events: list[tuple[str, float, str]] = []

    async def event(kind: str, version: int, statistic: float, detail: str) -> None:
        events.append((kind, statistic, detail))

    trainer._event = event  # type: ignore[method-assign]
    trainer.current, trainer.candidate = model(1, served_sd), model(2, candidate_sd)
    tally = ShadowTally()
    halves = np.array_split(STREAM, 2)
    if glitch is not None:
        halves[1] = np.append(halves[1], glitch)
    for worker, x in zip(("a", "b"), halves, strict=True):
        totals = compare(classification(x, served_sd), classification(x, candidate_sd))
        # The worker's digest of the candidate it read; the trainer's, of the one it published.
        report = ShadowReport(2, 1, worker, totals, model_digest(trainer.candidate))
        digest = trainer.candidate_digest(trainer.candidate)
        assert tally.update(Event.loads(report.to_event("gmm").dumps()), None, digest)
    plain = tally.totals(2, 1).difference
    done = asyncio.run(trainer.judge_candidate(tally))
    return done, events, publisher, plain


@pytest.mark.parametrize("glitch", [None, GLITCH])
def test_a_worse_candidate_stays_rejected_with_a_glitch_in_its_favour(glitch):
    # Broader than the stream (about 0.13 nats per record worse); a glitch record is far less
    # unlikely under it (log p about -2e17 against -5e17).
    done, events, publisher, plain = judge(1.5, 1.0, glitch)
    assert done == "rejected" and publisher.withdrawn == [2] and not publisher.published
    assert (plain > 1e10) == (glitch is not None)  # the glitch alone would have promoted it
    [(kind, statistic, detail)] = events
    assert kind == "rejected" and "clipped mean" in detail and "in shadow" in detail
    assert -0.2 < statistic < -0.05  # the clipped mean the verdict was taken on


@pytest.mark.parametrize("glitch", [None, GLITCH])
def test_a_better_candidate_stays_promoted_with_a_glitch_against_it(glitch):
    done, events, publisher, plain = judge(1.0, 1.5, glitch)
    assert done == "promoted" and [m.version for m in publisher.published] == [3]
    assert (plain < -1e10) == (glitch is not None)  # the glitch alone would have rejected it
    [(kind, statistic, detail)] = events
    assert kind == "promoted" and 0.05 < statistic < 0.2 and "clipped mean" in detail
