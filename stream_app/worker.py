"""The worker's composition root: builds every part from the settings and wires them together.

    ModelFollower   params topic -> ModelHolder (served) and ShadowScorer (candidate)
    RecordPath      input topic -> slices classified under the served model -> Delivery ->
                    Checkpoint (commits in fetch order); hands each slice to the ShadowScorer
                    and each delivered slice to the DriftWatch
    EventSink       the events topic (drift alarms, shadow reports)
    Readiness       /ready, from the served model, delivery and the checkpoint

The Faust agent, tasks and web views (stream_app.agents, stream_app.views) are thin functions
over one `Worker`. Nothing here runs at import time; `Worker(settings)` builds the parts and
starts nothing until the app's tasks call `feed` and `follow_params`.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

from kafka_common.events import EventProducer
from kafka_common.signing import Verifier
from mixture.params import ModelParams
from stream_app.checkpoint import Checkpoint
from stream_app.delivery import Delivery, KafkaSink
from stream_app.drift import DriftDetector
from stream_app.drift_watch import DriftWatch
from stream_app.event_sink import EventSink
from stream_app.gc_policy import streaming_gc
from stream_app.metrics import WorkerMetrics
from stream_app.model_follower import ModelFollower
from stream_app.model_state import ModelHolder
from stream_app.readiness import Readiness
from stream_app.record_path import RecordPath
from stream_app.settings import WorkerSettings
from stream_app.shadow import ShadowScorer
from stream_app.source import InBatch, PointSource

log = logging.getLogger(__name__)


def _terminate(reason: str) -> None:
    """Stops the process as SIGTERM does: what was delivered in order is committed, no more."""
    os.kill(os.getpid(), signal.SIGTERM)


class Worker:
    """Builds the worker's parts from `settings`; the app's agent and tasks call into it."""

    def __init__(
        self,
        settings: WorkerSettings,
        metrics: WorkerMetrics | None = None,
        terminate: Callable[[str], None] = _terminate,
    ) -> None:
        s = self.settings = settings
        m = self.metrics = metrics or WorkerMetrics(s.max_batch, model=s.model_name)
        self._terminate = terminate
        self.exit_code = 0
        #: Names this process in its events (the trainer sums the workers' shadow totals).
        self.worker_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        # One thread does all classification, in order; another compiles new model layouts,
        # so a compilation never stalls the stream.
        self.inference = ThreadPoolExecutor(1, thread_name_prefix="gmm-inference")
        self.compiler = ThreadPoolExecutor(1, thread_name_prefix="gmm-compile")
        holder_args = (s.temperature, s.max_batch, m, self.compiler, s.classifier_sizes)
        self.holder = ModelHolder(*holder_args)
        candidate = ModelHolder(*holder_args, served=False, classifiers=self.holder.classifiers)
        # Events are signed with GMM_EVENTS_SIGNING_KEY, if set (the trainer may demand it).
        producer = (
            EventProducer(s.kafka, s.events_topic, s.events_signer()) if s.events_topic else None
        )
        self.events = EventSink(producer, m)
        self.shadow = ShadowScorer(
            candidate, m, self.inference, self.events, s.model_name, self.worker_id
        )
        self.models = ModelFollower(
            s.kafka,
            s.params_topic,
            s.model_name,
            self.holder,
            self.shadow,
            m,
            # Params records are used only if signed by one of these keys.
            Verifier.from_files(s.params_verify_key) if s.params_verify_key else None,
            on_installed=self._installed,
        )
        self.drift = (
            DriftWatch(
                DriftDetector(
                    threshold=s.drift_threshold,
                    warmup_blocks=s.drift_warmup_blocks,
                    block_records=s.drift_block_records,
                ),
                m,
                self.events,
                s.model_name,
                self.worker_id,
                self.models.served_version,
            )
            if s.drift_threshold > 0
            else None
        )
        self.source = PointSource(
            s.kafka,
            s.input_topic,
            s.group_id,
            s.max_batch,
            s.max_delay_ms / 1000,
            s.session_timeout_s,
            m,
            # Revoke settles, then commits, each bounded by the revoke timeout.
            rebalance_timeout_s=2 * s.revoke_timeout_s + 10,
            max_batch_bytes=s.max_batch_bytes,
            max_key_bytes=s.max_key_bytes,
        )
        sink = KafkaSink(s.kafka, s.output_topic, s.dlq_topic)
        delivery = Delivery(sink, m)
        checkpoint = Checkpoint(self.source, m, on_fatal=self.halt)
        self.source.on_revoke = self._revoke
        self.path = RecordPath(
            s,
            m,
            self.holder,
            self.source,
            sink,
            delivery,
            checkpoint,
            self.inference,
            after_slice=self.shadow.score,
            on_delivered=self.drift.observe if self.drift is not None else None,
        )
        self.use(delivery, checkpoint)

    def use(self, delivery: Delivery, checkpoint: Checkpoint) -> None:
        """Puts `delivery` and `checkpoint` on the record path, its gauges and readiness (the
        unit tests pass in-memory fakes this way)."""
        self.path.delivery, self.path.checkpoint = delivery, checkpoint
        self.metrics.delivery_stuck_seconds.set_function(delivery.stuck_seconds)
        self.metrics.commit_pending_seconds.set_function(checkpoint.pending_seconds)
        self.readiness = Readiness(
            self.settings.model_name,
            self.settings.delivery_stuck_s,
            self.holder,
            delivery,
            checkpoint,
        ).check

    def _installed(self, model: ModelParams) -> None:
        if self.drift is not None:
            self.drift.reset()

    def halt(self, reason: str) -> None:
        """Stops the worker uncommitted past the failure, with one clear line and exit code 1."""
        if self.exit_code == 0:
            self.exit_code = 1
            log.critical("stopping the worker: %s", reason)
            self._terminate(reason)

    async def _revoke(self, partitions: list) -> None:
        await self.path.checkpoint.revoke(partitions, self.settings.revoke_timeout_s)

    # -- what the Faust app runs -----------------------------------------------------------

    async def follow_params(self) -> None:
        """Installs the newest model at start (file, then topic) and every newer one after."""
        await self.models.run(self.settings.load_params_file())

    async def feed(self, put: Callable[[InBatch], Awaitable[None]]) -> None:
        """Reads the input topic in micro-batches for the agent, once a model is being served."""
        await self.holder.ready.wait()  # no model, no consumption: records wait in Kafka
        try:
            with streaming_gc():
                await self.path.feed(put)
        finally:
            await self.events.stop()

    async def handle(self, batch: InBatch) -> None:
        """One micro-batch, from the agent (RecordPath.handle)."""
        await self.path.handle(batch)

    async def watch_lag(self) -> None:
        await self.source.watch_lag()

    async def report_shadow(self) -> None:
        await self.shadow.report(self.settings.shadow_report_seconds)
