"""Publishing a params file made anywhere (a notebook, scikit-learn, another trainer) as the next
version of a model name: `gmm-trainer publish --params FILE [--data FILE]`.

The file goes through what the trainer's own fits go through: validation as a `gmm-params/2`
record (what a worker would refuse is refused here); the publish guards of `mixture.guards`,
judged on the input topic's recent window (read as the trainer reads it) and on the data file
given, each set that holds enough points: finite, no collapsed component, the stream's dimension,
at most 1 % of the points the served model explains left beyond the new model's cut, and not
worse than the served model by the trimmed mean of the per-point differences; labels aligned
with the served model's; and the compare-and-set publication (`params_topic.Publisher`: signed
when the trainer signs, a candidate in shadow when GMM_PROMOTION=shadow). The guards are judged
against the served model read before the publication, and the publication is made only if that
is still the served one (and the same candidate): a version published meanwhile is never
overtaken unjudged. The same parameters as the served version's publish nothing (a retry).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from typing import Any, NamedTuple

import numpy as np

from kafka_common import params_topic
from kafka_common.topics import ensure_topics
from mixture import guards
from mixture.evaluate import log_likelihood
from mixture.fit_data import validated_points
from mixture.labels import align_components, order_by_location
from mixture.params import ModelParams
from mixture.robust import beyond_cut
from trainer.settings import TrainerSettings
from trainer.window import read_window

#: Provenance that a publication writes (`wire.params_record.stamped`, promotions, rollbacks): a
#: file exported from the topics carries its old publication's, which must not describe this one.
PUBLICATION_KEYS = ("model_name", "published_by", "stage", "promoted_from", "rolled_back_from")
#: Each Kafka step (reading the state, the window, publishing) gets this long; the guards' own
#: arithmetic is not counted.
KAFKA_SECONDS = 60.0
#: log p(x) is computed this many values (rows x K x D) at a time.
BLOCK_VALUES = 1 << 22


class Judged(NamedTuple):
    """Points the guards were judged on: where they came from, and how many."""

    source: str  # "input window" or the data file's path
    points: np.ndarray


class Published(NamedTuple):
    """What `publish_params` did: the model as published (or the served one, unchanged), or
    the guard that refused it."""

    model: ModelParams | None
    rejection: guards.Rejection | None
    stage: str | None  # served, candidate, or "unchanged" (the served version has these params)
    compared_with: int | None  # the served version the guards compared with (None: none)
    judged: tuple[Judged, ...]
    replaced_candidate: int | None = None


def as_new_publication(model: ModelParams, now: str | None = None) -> ModelParams:
    """The model without the provenance of an earlier publication (PUBLICATION_KEYS), its
    `fitted_at` the publication's time (the age the trainer times candidates and the alerts
    time the served model by; the file's own, if it had one, kept as `file_fitted_at`)."""
    meta = model.metadata
    extra = {k: v for k, v in meta.extra.items() if k not in PUBLICATION_KEYS}
    if isinstance(meta.fitted_at, str):
        extra["file_fitted_at"] = meta.fitted_at
    now = now or dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    meta = dataclasses.replace(meta, fitted_at=now, extra=extra)
    return dataclasses.replace(model, metadata=meta)


def blocked_log_likelihood(points: np.ndarray, params: Any) -> np.ndarray:
    """log p(x) per point, a block of rows at a time (a whole window's N x K x D residuals can
    be gigabytes)."""
    width = max(1, params.n_components * params.dim)
    rows = max(1, BLOCK_VALUES // width)
    return np.concatenate(
        [log_likelihood(points[i : i + rows], params) for i in range(0, len(points), rows)]
        or [np.zeros(0)]
    )


def check_params(
    model: ModelParams,
    judged: list[Judged] | tuple[Judged, ...],
    served: ModelParams | None,
    settings: TrainerSettings,
) -> ModelParams | guards.Rejection:
    """The trainer's publish guards for a model fitted elsewhere, on every set of points in
    `judged`; the model with its labels aligned with the served model's (or ordered by
    location) when it passes every one."""
    params = model.mixture
    needed = settings.min_points or 10 * params.n_components
    if not judged or max(len(j.points) for j in judged) < needed:
        return guards.Rejection(
            "too_few_points",
            f"at least {needed} points are needed to judge a K={params.n_components} model "
            f"(GMM_TRAIN_MIN_POINTS or 10 a component); give them as --data",
        )
    if served is not None and served.mixture.dim != params.dim:
        return guards.Rejection(
            "dimension_mismatch",
            f"the served version {served.version} has D={served.mixture.dim}, this model "
            f"D={params.dim}: workers would dead-letter every record",
        )
    rejection = guards.check_finite(params, 0.0)
    for source, points in judged:
        if rejection is not None or len(points) < needed:
            continue
        if points.shape[1] != params.dim:
            rejection = guards.Rejection(
                "dimension_mismatch",
                f"{source}: {points.shape[1]} coordinate(s) per point, the model D={params.dim}",
            )
            break
        rejection = guards.check_not_collapsed(params, points, settings.min_weight)
        if rejection is None and served is not None:
            # Points the served model explains that the new one puts beyond its cut: a
            # cluster it dropped (the trimmed mean cannot see a loss confined to so few).
            dropped = ~beyond_cut(points, served.mixture) & beyond_cut(points, params)
            rejection = guards.check_keeps_explained(int(dropped.sum()), len(points))
            rejection = rejection or guards.check_not_worse(
                blocked_log_likelihood(points, params),
                blocked_log_likelihood(points, served.mixture),
                settings.max_loss_regression,
            )
        if rejection is not None:
            rejection = rejection._replace(detail=f"{source}: {rejection.detail}")
    if rejection is not None:
        return rejection
    if served is None:
        return dataclasses.replace(model, mixture=order_by_location(params))
    return dataclasses.replace(model, mixture=align_components(params, served.mixture))


def same_parameters(a: ModelParams, b: ModelParams) -> bool:
    """The same covariance type and parameters (as the worker would serve them)."""
    return a.covariance == b.covariance and all(
        np.shape(x) == np.shape(y) and np.allclose(x, y, rtol=1e-12, atol=0)
        for x, y in zip(a.mixture, b.mixture, strict=True)
    )


async def _timed(awaitable: Any, what: str) -> Any:
    try:
        return await asyncio.wait_for(awaitable, KAFKA_SECONDS)
    except TimeoutError:
        raise TimeoutError(f"{what} took over {KAFKA_SECONDS:.0f} s") from None


async def publish_params(
    settings: TrainerSettings,
    model: ModelParams,
    data: tuple[str, np.ndarray] | None = None,
    published_by: str = "cli",
) -> Published:
    """Judges `model` on the input topic's window and on `data` ((source, (N, D) points)),
    against the served version, and publishes it as the next version if it passes (the file's
    own version is ignored: the publisher assigns it). Raises params_topic.StaleState if another
    version was published between the two, DataError for data that cannot judge anything."""
    specs = [
        params_topic.params_spec(settings.params_topic),
        params_topic.history_spec(settings.history_topic),
    ]
    # A first model may be the deployment's first.
    await _timed(ensure_topics(settings.kafka, specs), "creating the params topics")
    publisher = params_topic.Publisher.from_settings(
        settings, timeout_s=params_topic.COMMAND_PUBLISH_SECONDS
    )
    served, candidate, _ = await _timed(
        params_topic.read_state(
            settings.kafka,
            settings.params_topic,
            settings.model_name,
            publisher.verifier,
            params_topic.SETTLE_SECONDS,
        ),
        "reading the params topic",
    )
    window = await _timed(
        read_window(
            settings.kafka,
            settings.input_topic,
            settings.window_records,
            settings.window_seconds,
            # None: the stream's most common dimension, which the model must have.
            served.mixture.dim if served else None,
            settings.max_record_bytes,
            deadline_s=KAFKA_SECONDS,
        ),
        f"reading the input topic {settings.input_topic!r}",
    )
    judged = [Judged("input window", window.points)] if len(window.points) else []
    if data is not None:
        points = validated_points(data[1])[0]  # DataError: nothing to judge a spread by
        judged.append(Judged(data[0], points))
    compared = served.version if served else None
    checked = await asyncio.to_thread(
        check_params, as_new_publication(model), judged, served, settings
    )
    frozen = tuple(judged)
    if isinstance(checked, guards.Rejection):
        return Published(None, checked, None, compared, frozen)
    if served is not None and candidate is None and same_parameters(checked, served):
        return Published(served, None, "unchanged", compared, frozen)
    main = frozen[-1].points  # the data file when given, else the window
    extra = {
        "mean_log_likelihood": float(blocked_log_likelihood(main, checked.mixture).mean()),
        "judged_on": {j.source: len(j.points) for j in frozen},
    }
    meta = checked.metadata
    checked = dataclasses.replace(
        checked, metadata=dataclasses.replace(meta, extra={**meta.extra, **extra})
    )
    stage = "candidate" if settings.promotion == "shadow" and served is not None else "served"
    expect = (served.version if served else 0, candidate.version if candidate else None)
    # Bounded by the publisher, not _timed: it alone can tell a timeout before its commit
    # (nothing published) from one after it (OutcomeUnknown).
    published = await publisher.publish(checked, published_by, stage=stage, expect=expect)
    replaced = candidate.version if candidate is not None else None
    return Published(published, None, stage, compared, frozen, replaced)
