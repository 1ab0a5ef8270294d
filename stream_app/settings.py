"""The worker's settings: one typed object, built from environment variables at start-up.

python -m stream_app.settings --markdown   # the README's configuration table
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Mapping

from kafka_common.settings import KafkaSettings, SettingsError, env_field, load, markdown_table


@dataclasses.dataclass(frozen=True)
class WorkerSettings:
    """Everything a stream worker process is configured with."""

    kafka: KafkaSettings = dataclasses.field(default_factory=KafkaSettings)
    input_topic: str = env_field(
        "GMM_INPUT_TOPIC", "gmm.points", "Topic of data points to classify"
    )
    output_topic: str = env_field(
        "GMM_OUTPUT_TOPIC", "gmm.assignments", "Topic the assignments go to"
    )
    params_topic: str = env_field(
        "GMM_PARAMS_TOPIC", "gmm.params", "Compacted topic of versioned model parameters"
    )
    dlq_topic: str = env_field("GMM_DLQ_TOPIC", "gmm.deadletter", "Dead-letter topic for bad input")
    input_partitions: int = env_field(
        "GMM_INPUT_PARTITIONS", 4, "Partitions of the input topic when the worker creates it"
    )
    group_id: str = env_field(
        "GMM_CONSUMER_GROUP",
        "gmm-worker",
        "Consumer group of the workers on the input topic (the Faust app id adds -app)",
    )
    web_port: int = env_field("GMM_WORKER_WEB_PORT", 6066, "Port of /metrics, /health and /ready")
    web_host: str = env_field("GMM_WORKER_WEB_HOST", "0.0.0.0", "Address the web server binds")
    max_batch: int = env_field("GMM_MAX_BATCH", 1024, "Largest micro-batch (records)")
    max_delay_ms: float = env_field(
        "GMM_MAX_DELAY_MS", 20.0, "Longest a record waits for its micro-batch to fill (ms)"
    )
    temperature: int = env_field(
        "GMM_TEMPERATURE", 0, "0: MAP assignment; 1: a posterior sample", choices=(0, 1)
    )
    seed: int = env_field("GMM_SEED", 0, "RNG seed for temperature 1 (a fresh key per batch)")
    session_timeout_s: float = env_field(
        "GMM_SESSION_TIMEOUT_S",
        15.0,
        "Consumer-group session timeout: how soon a dead worker's partitions move to the others",
    )
    max_record_bytes: int = env_field(
        "GMM_MAX_RECORD_BYTES", 65536, "Larger input records are dead-lettered as oversized"
    )
    params_file: str = env_field(
        "GMM_PARAMS_FILE", "", "Optional parameters JSON to serve until the params topic has one"
    )
    data_dir: str = env_field("GMM_WORKER_DATA_DIR", "/tmp/gmm-worker", "Faust's data directory")
    log_level: str = env_field(
        "GMM_LOG_LEVEL", "info", "Log level", choices=("debug", "info", "warn", "error")
    )

    def validate(self) -> None:
        if self.max_batch < 1:
            raise SettingsError(f"GMM_MAX_BATCH must be >= 1, got {self.max_batch}")
        if not self.max_delay_ms > 0:
            raise SettingsError(f"GMM_MAX_DELAY_MS must be > 0, got {self.max_delay_ms}")
        if not 0 < self.web_port < 65536:
            raise SettingsError(f"GMM_WORKER_WEB_PORT must be a port number, got {self.web_port}")
        if self.session_timeout_s < 6:
            raise SettingsError(
                "GMM_SESSION_TIMEOUT_S must be >= 6 (the broker's minimum), "
                f"got {self.session_timeout_s}"
            )
        if self.input_partitions < 1:
            raise SettingsError(f"GMM_INPUT_PARTITIONS must be >= 1, got {self.input_partitions}")
        if self.params_file and not os.path.isfile(self.params_file):
            raise SettingsError(f"GMM_PARAMS_FILE={self.params_file!r} does not exist")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WorkerSettings:
        return load(cls, os.environ if environ is None else environ)


if __name__ == "__main__":
    if "--markdown" in sys.argv:
        print(markdown_table(WorkerSettings), end="")
