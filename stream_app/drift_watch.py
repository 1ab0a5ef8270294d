"""The worker's drift watch: feeds each delivered slice's per-record log p(x) under the served
model to the drift detector (`drift.py`), and turns an alarm into a metric, a log line and a
`drift` event. Off when `GMM_DRIFT_THRESHOLD` is 0."""

from __future__ import annotations

import logging
from collections.abc import Callable

from stream_app.batch import BatchOutcome
from stream_app.drift import DriftAlarm, DriftDetector
from stream_app.event_sink import EventSink
from stream_app.metrics import WorkerMetrics
from wire.event import Event

log = logging.getLogger(__name__)


class DriftWatch:
    """Watches the served model's fit; `reset()` when a new model is installed."""

    def __init__(
        self,
        detector: DriftDetector,
        metrics: WorkerMetrics,
        events: EventSink,
        model_name: str,
        worker_id: str,
        served_version: Callable[[], int],
    ) -> None:
        self.detector = detector
        self.metrics = metrics
        self.events = events
        self.model_name = model_name
        self.worker_id = worker_id
        self.served_version = served_version

    def reset(self) -> None:
        """The baseline belongs to the model: a new one warms up again."""
        self.detector.reset()
        self.metrics.drift_statistic.set(0.0)

    def observe(self, outcome: BatchOutcome) -> None:
        """A delivered slice's assignments (a slice of a previous model is not counted)."""
        if not outcome.assignments or outcome.model_version != self.served_version():
            return
        alarms = self.detector.update(outcome.log_likelihoods)
        self.metrics.drift_statistic.set(self.detector.statistic)
        for alarm in alarms:
            self._raise(alarm, outcome.model_version)

    def _raise(self, alarm: DriftAlarm, version: int) -> None:
        self.metrics.drift_alarms.inc()
        log.warning(
            "drift: mean log p(x) %.4f vs the baseline %.4f of model version %d (statistic %.1f)",
            alarm.current,
            alarm.baseline,
            version,
            alarm.statistic,
        )
        self.events.send(
            Event.now(
                "drift",
                self.model_name,
                version,
                alarm.statistic,
                detail=f"mean log p(x) {alarm.current:.4f} vs baseline {alarm.baseline:.4f}",
                data={
                    "records": alarm.records,
                    "baseline": alarm.baseline,
                    "current": alarm.current,
                    "worker": self.worker_id,
                },
            )
        )
