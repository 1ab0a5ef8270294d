"""The model follower: keeps the worker serving the newest model of its name.

At start it installs the parameters file (`GMM_PARAMS_FILE`) if one is given, then the params
topic's newest valid record of the name, then each newer one as it is published; records that
fail validation or (with `GMM_PARAMS_VERIFY_KEY`) signature checks are counted and skipped. The
name's candidate goes to shadow scoring. A broker outage or a missing topic is retried every
second while the current model keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from kafka_common import params_topic
from kafka_common.settings import KafkaSettings
from kafka_common.signing import Verifier
from mixture.params import ModelParams
from stream_app.metrics import WorkerMetrics
from stream_app.model_state import ModelHolder
from stream_app.shadow import ShadowScorer

log = logging.getLogger(__name__)

#: Seconds between attempts to follow the params topic after a failure.
RETRY_S = 1.0


class ModelFollower:
    """Follows the params topic into the served holder; candidates go to `shadow`."""

    def __init__(
        self,
        kafka: KafkaSettings,
        topic: str,
        name: str,
        holder: ModelHolder,
        shadow: ShadowScorer,
        metrics: WorkerMetrics,
        verifier: Verifier | None = None,
        on_installed: Callable[[ModelParams], None] = lambda model: None,
    ) -> None:
        self.kafka = kafka
        self.topic = topic
        self.name = name
        self.holder = holder
        self.shadow = shadow
        self.metrics = metrics
        self.verifier = verifier
        self.on_installed = on_installed

    def served_version(self) -> int:
        """The served model's version (-1 before the first)."""
        current = self.holder.current
        return current.model.version if current is not None else -1

    async def run(self, initial: ModelParams | None = None) -> None:
        """Installs `initial` (the parameters file), then follows the topic forever."""
        if initial is not None:
            await self.install(initial)
        while True:
            try:
                await params_topic.follow(
                    self.kafka,
                    self.topic,
                    self.name,
                    self.install,
                    on_reject=self._rejected,
                    on_reject_catching_up=self._rejected_catching_up,
                    on_candidate=self.candidate,
                    verifier=self.verifier,
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a broker outage or a missing topic: retry, keep serving
                log.warning("params topic: %s; retrying in %.0f s", exc, RETRY_S)
                await asyncio.sleep(RETRY_S)

    async def install(self, model: ModelParams) -> bool:
        """Serves `model` if it is newer and compiles; True if it was installed."""
        installed = await self.holder.install(model)
        if installed:
            self.on_installed(model)
            await self.shadow.served_changed(model)
        return installed

    async def candidate(self, model: ModelParams | None) -> None:
        """The name's candidate changed (None: withdrawn)."""
        await self.shadow.propose(model, self.served_version())

    def _rejected(self, reason: str, message: str) -> None:
        self.metrics.params_rejected.labels(reason=reason, phase="live").inc()

    def _rejected_catching_up(self, reason: str, message: str) -> None:
        self.metrics.params_rejected.labels(reason=reason, phase="catch_up").inc()
