"""Publishing a params file made anywhere (a notebook, scikit-learn, another trainer) as the next
version of a model name: `gmm-trainer publish --params FILE --data FILE`.

The file goes through what the trainer's own fits go through: validation as a `gmm-params/2`
record (what a worker would refuse is refused here), the publish guards of `mixture.guards`
judged on the data given (finite, no collapsed component, not worse than the served model by
the trimmed mean of the per-point differences), labels aligned with the served model's, and the
compare-and-set publication (`params_topic.Publisher`: signed when the trainer signs, a candidate
in shadow when GMM_PROMOTION=shadow). The guards are judged against the served model read
before the publication, and the publication is made only if that is still the served one (and
the same candidate): a model published meanwhile is never overtaken unjudged.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np

from kafka_common import params_topic
from kafka_common.topics import ensure_topics
from mixture import guards
from mixture.evaluate import log_likelihood
from mixture.labels import align_components, order_by_location
from mixture.params import ModelParams
from trainer.settings import TrainerSettings

#: Provenance that a publication writes (`wire.params_record.stamped`, promotions, rollbacks): a
#: file exported from the topics carries its old publication's, which must not describe this one.
PUBLICATION_KEYS = ("model_name", "published_by", "stage", "promoted_from", "rolled_back_from")


class Published(NamedTuple):
    """What `publish_params` did: the model as published, or the guard that refused it."""

    model: ModelParams | None
    rejection: guards.Rejection | None
    stage: str | None
    #: The served version the guards compared with (None: none was served).
    compared_with: int | None


def as_new_publication(model: ModelParams) -> ModelParams:
    """The model without the provenance of an earlier publication (PUBLICATION_KEYS)."""
    meta = model.metadata
    extra = {k: v for k, v in meta.extra.items() if k not in PUBLICATION_KEYS}
    return dataclasses.replace(model, metadata=dataclasses.replace(meta, extra=extra))


def check_params(
    model: ModelParams, points: np.ndarray, served: ModelParams | None, settings: TrainerSettings
) -> ModelParams | guards.Rejection:
    """The trainer's publish guards for a model fitted elsewhere, on `points` (N, D); the model
    with its labels aligned with the served model's (or ordered by location) when it passes."""
    params = model.mixture
    if points.ndim != 2 or points.shape[1] != params.dim:
        return guards.Rejection(
            "dimension_mismatch",
            f"the data has {points.shape[1]} coordinate(s) per point, the model D={params.dim}",
        )
    rejection = guards.check_finite(params, 0.0) or guards.check_not_collapsed(
        params, points, settings.min_weight
    )
    if rejection is not None:
        return rejection
    if served is None:
        return dataclasses.replace(model, mixture=order_by_location(params))
    if served.mixture.dim != params.dim:
        return guards.Rejection(
            "dimension_mismatch",
            f"the served version {served.version} has D={served.mixture.dim}, this model "
            f"D={params.dim}: workers would dead-letter every record",
        )
    rejection = guards.check_not_worse(
        log_likelihood(points, params),
        log_likelihood(points, served.mixture),
        settings.max_loss_regression,
    )
    if rejection is not None:
        return rejection
    return dataclasses.replace(model, mixture=align_components(params, served.mixture))


async def publish_params(
    settings: TrainerSettings, model: ModelParams, points: np.ndarray, published_by: str = "cli"
) -> Published:
    """Judges `model` on `points` against the served version and publishes it as the next
    version if it passes (the file's own version is ignored: the publisher assigns it).
    Raises params_topic.StaleState if another version was published between the two."""
    specs = [
        params_topic.params_spec(settings.params_topic),
        params_topic.history_spec(settings.history_topic),
    ]
    await ensure_topics(settings.kafka, specs)  # a first model may be the deployment's first
    publisher = params_topic.Publisher.from_settings(settings)
    served, candidate, _ = await params_topic.read_state(
        settings.kafka, settings.params_topic, settings.model_name, publisher.verifier
    )
    checked = check_params(as_new_publication(model), points, served, settings)
    compared = served.version if served else None
    if isinstance(checked, guards.Rejection):
        return Published(None, checked, None, compared)
    stage = "candidate" if settings.promotion == "shadow" and served is not None else "served"
    expect = (served.version if served else 0, candidate.version if candidate else None)
    published = await publisher.publish(checked, published_by, stage=stage, expect=expect)
    return Published(published, None, stage, compared)
