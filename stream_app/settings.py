"""The worker's settings: one typed object, built from environment variables at start-up.

python -m stream_app.settings --markdown   # docs/configuration.md's table
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING

from kafka_common.jax_cache import jax_cache_dir_field
from kafka_common.settings import (
    KafkaSettings,
    SettingsError,
    check_model_name,
    env_field,
    events_topic_field,
    input_topic_field,
    load,
    markdown_table,
    model_name_field,
    params_topic_field,
)
from mixture.params import ModelParams, ParamsError

if TYPE_CHECKING:
    from kafka_common.event_signing import EventSigner

#: GMM_SLICE_RECORDS=0 picks the slice by JAX's backend. On a CPU a batch of up to
#: SLICE_RECORDS_CPU records is one slice: its outputs are sent as one record batch per output
#: partition (up to 512 KiB each). Slices of 256 (the default until measured otherwise) cut a
#: batch's outputs into four times as many record batches, and aiokafka's producer sends one
#: request at a time to a broker, with one record batch per partition in it, so a batch took
#: four requests where it now takes one: the worker drained 1.2-1.8x faster with slices of
#: 1,024 at batch 1,024, and 1.1-1.2x faster again with slices of 4,096 at batch 4,096, at 2, 12
#: and 64 partitions, its p99 at 5,000 and 20,000 records/s unchanged (bench.stream). A larger
#: batch is cut into slices of 4,096 (the largest measured), so that the event loop, which
#: validates and encodes a slice without a pause, turns at least that often. On a GPU a call
#: costs about the same up to thousands of rows; slices of 1,024
#: (mixture.classify.default_sizes picks the padding sizes alike).
SLICE_RECORDS_ACCELERATOR = 1024
SLICE_RECORDS_CPU = 4096
#: GMM_MAX_BATCH's default: on a CPU, also the default slice.
DEFAULT_MAX_BATCH = 1024


@functools.cache
def jax_backend() -> str:
    """JAX's default backend (cpu, gpu or tpu); initialises JAX's backends on first call."""
    import jax

    return str(jax.default_backend())


def parse_pad_sizes(raw: str) -> tuple[int, ...] | None:
    """GMM_PAD_SIZES: None for auto (or empty), else the sizes, sorted; SettingsError if bad."""
    text = raw.strip().lower()
    if text in ("", "auto"):
        return None
    try:
        sizes = tuple(sorted({int(v) for v in text.split(",")}))
    except ValueError:
        sizes = ()
    if not sizes or sizes[0] < 1:
        raise SettingsError(
            f"GMM_PAD_SIZES must be auto or positive integers separated by commas, got {raw!r}"
        )
    return sizes


@dataclasses.dataclass(frozen=True)
class WorkerSettings:
    """Everything a stream worker process is configured with."""

    kafka: KafkaSettings = dataclasses.field(default_factory=KafkaSettings)
    input_topic: str = input_topic_field()
    output_topic: str = env_field(
        "GMM_OUTPUT_TOPIC", "gmm.assignments", "Topic the assignments go to"
    )
    params_topic: str = params_topic_field()
    model_name: str = model_name_field()
    events_topic: str = events_topic_field()
    drift_threshold: float = env_field(
        "GMM_DRIFT_THRESHOLD",
        16.0,
        "Page-Hinkley threshold of the drift alarm, in standard deviations of a block's mean "
        "log p(x) (0: no drift detection)",
    )
    drift_warmup_blocks: int = env_field(
        "GMM_DRIFT_WARMUP_BLOCKS", 64, "Blocks that set a model's baseline before any alarm"
    )
    drift_block_records: int = env_field(
        "GMM_DRIFT_BLOCK_RECORDS", 256, "Records per block of the drift test"
    )
    shadow_report_seconds: float = env_field(
        "GMM_SHADOW_REPORT_SECONDS",
        2.0,
        "How often a worker reports its shadow scores of a candidate on the events topic",
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
    max_batch: int = env_field("GMM_MAX_BATCH", DEFAULT_MAX_BATCH, "Largest micro-batch (records)")
    max_delay_ms: float = env_field(
        "GMM_MAX_DELAY_MS",
        20.0,
        "Longest a record waits for its micro-batch to fill (ms), counted from the broker's "
        "append time where the input topic has LogAppendTime (the fetch's delay counts toward "
        "at most half of it), else from its arrival",
    )
    max_batch_bytes: int = env_field(
        "GMM_MAX_BATCH_BYTES",
        4 * 1024 * 1024,
        "Largest micro-batch in bytes of keys and values (a single larger record is a batch of "
        "its own); with the fetch limits it bounds the records a worker holds "
        "(docs/operations.md, Memory)",
    )
    max_key_bytes: int = env_field(
        "GMM_MAX_KEY_BYTES",
        4096,
        "Longest key an output carries: a longer input key is cut to its first bytes, and the "
        "output records the whole key's size and SHA-256 (key_size, key_sha256, key_truncated)",
    )
    slice_records: int = env_field(
        "GMM_SLICE_RECORDS",
        0,
        "Records classified and sent at a time within a batch, capped by GMM_MAX_BATCH; 0: by "
        f"JAX's backend, the whole batch up to {SLICE_RECORDS_CPU} on a CPU, "
        f"{SLICE_RECORDS_ACCELERATOR} on a GPU",
    )
    pad_sizes: str = env_field(
        "GMM_PAD_SIZES",
        "auto",
        "Batch sizes the classifier is compiled for, comma-separated (a slice is padded up to "
        "the next one; the largest is the most rows per call); auto: 16, 64, 256, ... up to "
        "GMM_MAX_BATCH on a CPU, from 256 on a GPU",
    )
    temperature: int = env_field(
        "GMM_TEMPERATURE", 0, "0: MAP assignment; 1: a posterior sample", choices=(0, 1)
    )
    seed: int = env_field(
        "GMM_SEED",
        0,
        "RNG seed for temperature 1: a record's draw is a function of (seed, topic, partition, "
        "offset)",
    )
    session_timeout_s: float = env_field(
        "GMM_SESSION_TIMEOUT_S",
        15.0,
        "Consumer-group session timeout: how soon a dead worker's partitions move to the others",
    )
    max_record_bytes: int = env_field(
        "GMM_MAX_RECORD_BYTES", 65536, "Larger input records are dead-lettered as oversized"
    )
    dlq_payload_bytes: int = env_field(
        "GMM_DLQ_PAYLOAD_BYTES",
        4096,
        "Bytes of a bad record's payload kept in its dead letter (the size and SHA-256 of the "
        "whole payload are always kept)",
    )
    max_output_bytes: int = env_field(
        "GMM_MAX_OUTPUT_BYTES",
        1_000_000,
        "Largest output record sent; a larger one becomes an output_too_large dead letter "
        "(keep under the broker's message.max.bytes)",
    )
    delivery_stuck_s: float = env_field(
        "GMM_DELIVERY_STUCK_S",
        30.0,
        "Outputs unacknowledged this long make /ready answer 503 (delivery stuck)",
    )
    revoke_timeout_s: float = env_field(
        "GMM_REVOKE_TIMEOUT_S",
        20.0,
        "Longest a rebalance waits for in-flight batches before giving up partitions",
    )
    stop_timeout_s: float = env_field(
        "GMM_STOP_TIMEOUT_S",
        10.0,
        "Longest a graceful stop waits for started batches to be delivered and committed",
    )
    params_file: str = env_field(
        "GMM_PARAMS_FILE", "", "Optional parameters JSON to serve until the params topic has one"
    )
    data_dir: str = env_field("GMM_WORKER_DATA_DIR", "/tmp/gmm-worker", "Faust's data directory")
    log_level: str = env_field(
        "GMM_LOG_LEVEL", "info", "Log level", choices=("debug", "info", "warn", "error")
    )
    jax_cache_dir: str = jax_cache_dir_field()
    params_verify_key: str = env_field(
        "GMM_PARAMS_VERIFY_KEY",
        "",
        "Ed25519 public keys (PEM files, comma-separated while keys rotate): serve only params "
        "records signed by one of them (docs/security.md); empty: no signature check",
    )
    events_signing_key: str = env_field(
        "GMM_EVENTS_SIGNING_KEY",
        "",
        "Ed25519 private key (PEM file) that signs every event this worker sends, for a trainer "
        "with GMM_EVENTS_VERIFY_KEY (docs/security.md); empty: events go unsigned",
    )

    def events_signer(self) -> EventSigner | None:
        """The signer of GMM_EVENTS_SIGNING_KEY (None: events go unsigned)."""
        from kafka_common.event_signing import EventSigner

        return EventSigner.from_file(self.events_signing_key) if self.events_signing_key else None

    def validate(self) -> None:
        check_model_name(self.model_name)
        self.events_signer()  # a bad key file: one-line SettingsError
        if self.params_verify_key:
            from kafka_common.signing import Verifier

            Verifier.from_files(self.params_verify_key)  # a bad file: one-line SettingsError
        if not self.drift_threshold >= 0:
            raise SettingsError(f"GMM_DRIFT_THRESHOLD must be >= 0, got {self.drift_threshold}")
        if self.drift_warmup_blocks < 2 or self.drift_block_records < 1:
            raise SettingsError(
                "GMM_DRIFT_WARMUP_BLOCKS must be >= 2 and GMM_DRIFT_BLOCK_RECORDS >= 1"
            )
        if not self.shadow_report_seconds > 0:
            raise SettingsError(
                f"GMM_SHADOW_REPORT_SECONDS must be > 0, got {self.shadow_report_seconds}"
            )
        if self.max_batch < 1:
            raise SettingsError(f"GMM_MAX_BATCH must be >= 1, got {self.max_batch}")
        if not self.max_delay_ms > 0:
            raise SettingsError(f"GMM_MAX_DELAY_MS must be > 0, got {self.max_delay_ms}")
        if self.max_batch_bytes < 1024:
            raise SettingsError(f"GMM_MAX_BATCH_BYTES must be >= 1024, got {self.max_batch_bytes}")
        if not 0 < self.web_port < 65536:
            raise SettingsError(f"GMM_WORKER_WEB_PORT must be a port number, got {self.web_port}")
        if self.session_timeout_s < 6:
            raise SettingsError(
                "GMM_SESSION_TIMEOUT_S must be >= 6 (the broker's minimum), "
                f"got {self.session_timeout_s}"
            )
        if self.slice_records < 0:
            raise SettingsError(
                f"GMM_SLICE_RECORDS must be >= 1, or 0 for the backend's, got {self.slice_records}"
            )
        parse_pad_sizes(self.pad_sizes)
        if self.max_output_bytes < 4096:
            raise SettingsError(
                f"GMM_MAX_OUTPUT_BYTES must be >= 4096, got {self.max_output_bytes}"
            )
        # A kept byte takes up to 8 in the dead letter's JSON (base64, and text with escapes).
        if not 0 <= self.dlq_payload_bytes <= self.max_output_bytes // 8:
            raise SettingsError(
                "GMM_DLQ_PAYLOAD_BYTES must be between 0 and GMM_MAX_OUTPUT_BYTES / 8 "
                f"({self.max_output_bytes // 8}), got {self.dlq_payload_bytes}"
            )
        # The key travels beside a dead letter's payload prefix: both must leave room for JSON.
        if not 0 <= self.max_key_bytes <= self.max_output_bytes // 8:
            raise SettingsError(
                "GMM_MAX_KEY_BYTES must be between 0 and GMM_MAX_OUTPUT_BYTES / 8 "
                f"({self.max_output_bytes // 8}), got {self.max_key_bytes}"
            )
        for name, value in (
            ("GMM_DELIVERY_STUCK_S", self.delivery_stuck_s),
            ("GMM_REVOKE_TIMEOUT_S", self.revoke_timeout_s),
            ("GMM_STOP_TIMEOUT_S", self.stop_timeout_s),
        ):
            if not value > 0:
                raise SettingsError(f"{name} must be > 0, got {value}")
        if self.revoke_timeout_s > 120:
            raise SettingsError(
                f"GMM_REVOKE_TIMEOUT_S must be <= 120 (the group's poll interval), "
                f"got {self.revoke_timeout_s}"
            )
        if self.input_partitions < 1:
            raise SettingsError(f"GMM_INPUT_PARTITIONS must be >= 1, got {self.input_partitions}")
        if self.params_file:
            self.load_params_file()

    @property
    def slice_size(self) -> int:
        """Records per slice: GMM_SLICE_RECORDS (0: the backend's), capped by the largest
        batch."""
        records = self.slice_records
        if records == 0:
            records = SLICE_RECORDS_CPU if jax_backend() == "cpu" else SLICE_RECORDS_ACCELERATOR
        return min(records, self.max_batch)

    @property
    def classifier_sizes(self) -> tuple[int, ...] | None:
        """The padding sizes of GMM_PAD_SIZES; None (auto): the classifier's default for the
        backend, up to GMM_MAX_BATCH."""
        return parse_pad_sizes(self.pad_sizes)

    def load_params_file(self) -> ModelParams | None:
        """The model of GMM_PARAMS_FILE (None if unset); a bad file is a one-line SettingsError."""
        if not self.params_file:
            return None
        try:
            # Version 0: it serves until the params topic has any version of the model.
            return ModelParams.loads(pathlib.Path(self.params_file).read_bytes()).with_version(0)
        except OSError as exc:
            raise SettingsError(
                f"GMM_PARAMS_FILE={self.params_file!r} cannot be read: {exc.strerror}"
            ) from None
        except ParamsError as exc:
            raise SettingsError(
                f"GMM_PARAMS_FILE={self.params_file!r} is not a valid model: {exc}"
            ) from None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WorkerSettings:
        return load(cls, os.environ if environ is None else environ)


if __name__ == "__main__":
    if "--markdown" in sys.argv:
        print(markdown_table(WorkerSettings), end="")
