"""Assembles the trainer job: settings, metrics endpoint, the Trainer, and its schedule.

`run(settings, once=True)` does one cycle (for cron and tests); otherwise a cycle starts every
GMM_TRAIN_INTERVAL_SECONDS (every GMM_FIRST_MODEL_RETRY_SECONDS while no model exists). A
failing cycle (the broker unreachable, say) is logged, counted and retried after a back-off; the
job does not die with it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time

from aiokafka.errors import KafkaError
from prometheus_client import start_http_server

from kafka_common.jax_cache import enable_compilation_cache
from kafka_common.params_topic import PublishConflict, history_spec, params_spec
from kafka_common.topics import ensure_topics
from trainer.cycle import CycleOutcome, Trainer
from trainer.metrics import TrainerMetrics
from trainer.settings import TrainerSettings

log = logging.getLogger("trainer")

#: Exit code of `run --once` when the cycle published nothing (a guard rejected the fit).
EXIT_NOT_PUBLISHED = 3


async def _run(settings: TrainerSettings, once: bool) -> int:
    metrics = TrainerMetrics()
    if settings.metrics_port and not once:
        start_http_server(settings.metrics_port, registry=metrics.registry)
    trainer = Trainer(settings, metrics)
    specs = [params_spec(settings.params_topic), history_spec(settings.history_topic)]
    await asyncio.wait_for(ensure_topics(settings.kafka, specs), 60)
    await asyncio.wait_for(trainer.load_current(), 60)
    log.info("%r: starting from version %d", settings.model_name, trainer.version)
    if once:
        outcome = await trainer.cycle()
        print(json.dumps(outcome.summary()), flush=True)
        if trainer.posterior_task is not None:  # published already; the report waits for NUTS
            await trainer.posterior_task
        return 0 if outcome.published else EXIT_NOT_PUBLISHED
    backoff = 1.0
    while True:
        started = time.monotonic()
        try:
            result: CycleOutcome = await trainer.cycle()
            log.info("cycle: %s", json.dumps(result.summary()))
            backoff = 1.0
        except (TimeoutError, KafkaError, OSError, PublishConflict) as exc:
            metrics.cycle_errors.inc()
            log.warning(
                "cycle failed (%s: %s); retrying in %.0f s", type(exc).__name__, exc, backoff
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, settings.interval_seconds)
            continue
        await asyncio.sleep(max(0.0, next_cycle_in(settings, trainer, result) - elapsed(started)))


def elapsed(started: float) -> float:
    return time.monotonic() - started


def next_cycle_in(settings: TrainerSettings, trainer: Trainer, outcome: CycleOutcome) -> float:
    """Seconds from a cycle's start to the next: the interval, or a short retry while no model
    of the name exists yet (a fresh stack gets its first model in seconds, not minutes)."""
    if trainer.current is None and outcome.published is None:
        return min(settings.first_model_retry_seconds, settings.interval_seconds)
    return settings.interval_seconds


def run(settings: TrainerSettings, once: bool) -> int:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    enable_compilation_cache(settings.jax_cache_dir)  # before anything is compiled
    return asyncio.run(_run(settings, once))
