"""The model lifecycle over the history topic: list every version of a name, roll back.

`gmm-trainer models` reads the history topic (every version ever published, never compacted)
and the params topic (what serves now). `gmm-trainer rollback --to V` republishes version V's
parameters as a new version (compare-and-set, like any publication) with
`metadata.rolled_back_from = V`; workers follow the params topic and serve it at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

from kafka_common import params_topic
from kafka_common.events import send_event
from mixture.params import ModelParams
from trainer.settings import TrainerSettings
from wire.event import Event

#: The most seconds `rollback` reads the history, and then sends its event, for (its publication
#: has its own bound).
READ_SECONDS = 60.0

log = logging.getLogger(__name__)


class NoSuchVersion(LookupError):
    """The history holds no such version of the model name."""


@dataclasses.dataclass(frozen=True)
class VersionRow:
    """One line of `gmm-trainer models`."""

    version: int
    #: serving (the newest served version), retired (an older one), candidate (scored in shadow
    #: now), shadowed (an earlier candidate: promoted as a new version, or rejected)
    stage: str
    fitted_at: str | None
    points: int | None
    mean_log_likelihood: float | None
    published_by: str
    rolled_back_from: int | None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def version_rows(
    history: list[ModelParams],
    serving: ModelParams | None,
    candidate: ModelParams | None = None,
) -> list[VersionRow]:
    """The history as rows, oldest version first (a version recorded twice: its last record)."""
    by_version = {m.version: m for m in history}
    if serving is not None:  # e.g. published before the history topic existed
        by_version.setdefault(serving.version, serving)
    rows = []
    for version in sorted(by_version):
        m = by_version[version]
        extra = m.metadata.extra
        ll = extra.get("mean_log_likelihood")
        if serving is not None and version == serving.version:
            stage = "serving"
        elif extra.get("stage") == "candidate":
            live = candidate is not None and version == candidate.version
            stage = "candidate" if live else "shadowed"
        else:
            stage = "retired"
        rows.append(
            VersionRow(
                version=version,
                stage=stage,
                fitted_at=m.metadata.fitted_at,
                points=m.metadata.n_points,
                mean_log_likelihood=float(ll) if isinstance(ll, int | float) else None,
                published_by=str(extra.get("published_by", "unknown")),
                rolled_back_from=extra.get("rolled_back_from"),
            )
        )
    return rows


def format_rows(rows: list[VersionRow]) -> str:
    """A fixed-width table for the terminal."""
    header = ("version", "stage", "fitted_at", "points", "mean_loglik", "published_by")
    lines = [header]
    for r in rows:
        by = r.published_by + (f" (from v{r.rolled_back_from})" if r.rolled_back_from else "")
        ll = "-" if r.mean_log_likelihood is None else f"{r.mean_log_likelihood:.4f}"
        pts = "-" if r.points is None else str(r.points)
        lines.append((str(r.version), r.stage, r.fitted_at or "-", pts, ll, by))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


async def list_versions(settings: TrainerSettings, name: str) -> list[VersionRow]:
    verifier = params_topic.Publisher.from_settings(settings, name).verifier
    history = await params_topic.read_all(
        settings.kafka, settings.history_topic, name, verifier=verifier
    )
    serving, candidate, _ = await params_topic.read_state(
        settings.kafka, settings.params_topic, name, verifier
    )
    return version_rows(history, serving, candidate)


async def rollback(settings: TrainerSettings, name: str, to_version: int) -> ModelParams:
    """Publishes version `to_version`'s parameters as the next version of `name`."""
    publisher = params_topic.Publisher.from_settings(
        settings, name, timeout_s=params_topic.COMMAND_PUBLISH_SECONDS
    )
    history = await asyncio.wait_for(
        params_topic.read_all(
            settings.kafka, settings.history_topic, name, verifier=publisher.verifier
        ),
        READ_SECONDS,
    )
    found = [m for m in history if m.version == to_version]
    if not found:
        versions = sorted({m.version for m in history})
        raise NoSuchVersion(
            f"no version {to_version} of {name!r} in {settings.history_topic!r} "
            f"(versions there: {versions or 'none'})"
        )
    old = found[-1]
    meta = old.metadata
    meta = dataclasses.replace(meta, extra={**meta.extra, "rolled_back_from": to_version})
    model = await publisher.publish(dataclasses.replace(old, metadata=meta), "rollback")
    if settings.events_topic:
        try:
            event = Event.now(
                "rollback",
                name,
                model.version,
                float(to_version),
                detail=f"version {to_version}'s parameters published as version {model.version}",
            )
            # Bounded: the rollback stands, and the command must say so.
            await asyncio.wait_for(
                send_event(settings.kafka, settings.events_topic, event), READ_SECONDS
            )
        except Exception as exc:  # the rollback stands; the event is information
            log.warning("could not send the rollback event: %s", exc)
    return model
