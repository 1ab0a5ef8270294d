"""Builds the Faust app of the stream worker (and nothing else).

Run it with `gmm-worker`, or as Faust users expect: `faust -A stream_app.app worker`. Importing
this module builds nothing: `create_app(settings)` builds the worker and its app, and the
module attribute `app`, which `faust -A` looks up, is built from the environment on first use.
"""

from __future__ import annotations

from typing import Any

import faust
from faust.tables import TableManager

from stream_app import agents, views
from stream_app.faust_sensor import faust_sensor
from stream_app.settings import WorkerSettings
from stream_app.topics import batches_channel
from stream_app.worker import Worker


def broker_credentials(settings: WorkerSettings) -> faust.types.auth.CredentialsT | None:
    kafka = settings.kafka
    if kafka.security_protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=kafka.sasl_username,
            password=kafka.sasl_password.reveal(),
            mechanism=kafka.sasl_mechanism,
            ssl_context=kafka.ssl_context(),
        )
    if kafka.security_protocol == "SSL":
        return faust.SSLCredentials(kafka.ssl_context())
    return None


class FaustWorker(faust.Worker):
    """Faust's worker without its terminal spinner.

    At log level `warn` and above the spinner sets the root logger to DEBUG, so that every log
    call spins it: every aiokafka debug line on the hot path (one per fetch request, per send,
    per frame) then became a LogRecord that no handler printed, 7% of a worker's time at 64
    partitions. Without it, the root logger keeps the level asked for.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.spinner = None


class TablelessManager(TableManager):
    """Faust's table manager without its start-up pause when the app has no tables.

    Faust's waits 1 s as it starts, so that tables defined late still register before its
    recovery starts. This app defines none (its state is its topics'), and the pause was a
    quarter of a new worker's time to /ready (bench/results/startup.md). With a table
    registered, Faust's own start runs unchanged. (Faust's documented extension point:
    `App(..., TableManager=...)`.)
    """

    async def on_start(self) -> None:
        if len(self):
            await super().on_start()
            return
        await self._update_channels()
        await self.recovery.start()


def create_app(settings: WorkerSettings, worker: Worker | None = None) -> faust.App:
    """The Faust app over one Worker (built from `settings` unless given)."""
    worker = worker or Worker(settings)
    app = faust.App(
        # Faust's own consumer group must differ from the input topic's (stream_app.source):
        # the two speak different assignment protocols, and the broker rejects a mixed group.
        f"{settings.group_id}-app",
        broker=[f"kafka://{server}" for server in settings.kafka.servers],
        broker_credentials=broker_credentials(settings),
        autodiscover=False,
        origin="stream_app",
        key_serializer="raw",
        value_serializer="raw",
        producer_acks=-1,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=min(3.0, settings.session_timeout_s / 3),
        web_port=settings.web_port,
        web_bind=settings.web_host,
        web_in_thread=False,
        datadir=settings.data_dir,
        store="memory://",
        Worker=FaustWorker,
        TableManager=TablelessManager,
    )
    app.monitor = faust_sensor(worker.metrics.registry)
    agents.register(app, worker, batches_channel(app))
    views.register(app, worker)
    app.worker = worker  # type: ignore[attr-defined]  # for gmm-worker's exit code
    return app


def __getattr__(name: str) -> Any:
    # `faust -A stream_app.app worker` reads `app`: built once, from the environment, then.
    if name == "app":
        built = globals()["app"] = create_app(WorkerSettings.from_env())
        return built
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
