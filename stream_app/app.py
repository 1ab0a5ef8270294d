"""Builds the Faust app of the stream worker (and nothing else).

Run it with `gmm-worker`, or as Faust users expect: `faust -A stream_app.app worker`.
Settings are read once, here, from the environment (see stream_app.settings).
"""

from __future__ import annotations

import faust

from stream_app.metrics import WorkerMetrics, faust_sensor
from stream_app.settings import WorkerSettings


def broker_credentials(settings: WorkerSettings) -> faust.types.auth.CredentialsT | None:
    kafka = settings.kafka
    if kafka.security_protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=kafka.sasl_username,
            password=kafka.sasl_password,
            mechanism=kafka.sasl_mechanism,
            ssl_context=kafka.ssl_context(),
        )
    if kafka.security_protocol == "SSL":
        return faust.SSLCredentials(kafka.ssl_context())
    return None


def create_app(settings: WorkerSettings, metrics: WorkerMetrics) -> faust.App:
    app = faust.App(
        # Faust's own consumer group must differ from the input topic's (stream_app.source):
        # the two speak different assignment protocols, and the broker rejects a mixed group.
        f"{settings.group_id}-app",
        broker=[f"kafka://{server}" for server in settings.kafka.servers],
        broker_credentials=broker_credentials(settings),
        autodiscover=["stream_app.agents", "stream_app.views"],
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
    )
    app.monitor = faust_sensor(metrics.registry)
    return app


settings = WorkerSettings.from_env()
metrics = WorkerMetrics(settings.max_batch)
app = create_app(settings, metrics)
