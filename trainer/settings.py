"""The trainer's settings: one typed object, built from environment variables at start-up.

Shares the Kafka and topic variables with the worker (same names, same meaning).

    python -m trainer.settings --markdown   # docs/configuration.md's table
"""

from __future__ import annotations

import dataclasses
import os
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
from mixture.covariance import ALIASES, COVARIANCES, DEFAULT_REG_COVAR, check_covariance
from mixture.select import DEFAULT_MAX_COMPONENTS, parse_components
from wire.shadow_report import CLIP_NATS

if TYPE_CHECKING:
    from kafka_common.event_signing import EventVerifier
    from kafka_common.signing import Signer, Verifier


@dataclasses.dataclass(frozen=True)
class TrainerSettings:
    """Everything the trainer job is configured with."""

    kafka: KafkaSettings = dataclasses.field(default_factory=KafkaSettings)
    input_topic: str = input_topic_field()
    params_topic: str = params_topic_field()
    history_topic: str = env_field(
        "GMM_HISTORY_TOPIC",
        "gmm.params.history",
        "Topic that keeps every published version (never compacted): models, rollback",
    )
    model_name: str = model_name_field()
    events_topic: str = events_topic_field()
    promotion: str = env_field(
        "GMM_PROMOTION",
        "immediate",
        "immediate: a refit that passes the guards serves at once; shadow: it is published as a "
        "candidate that workers score beside the served model, promoted or rejected after "
        "GMM_SHADOW_RECORDS records",
        choices=("immediate", "shadow"),
    )
    shadow_records: int = env_field(
        "GMM_SHADOW_RECORDS", 5000, "Records a candidate is scored on before it is judged"
    )
    shadow_tolerance: float = env_field(
        "GMM_SHADOW_TOLERANCE",
        0.05,
        "A candidate is promoted unless its log p(x) in shadow is more than this many nats below "
        "the served model's on the same records, on average over them, each record's difference "
        f"clipped to +-{CLIP_NATS:g} nats (so that one record cannot swing the verdict)",
    )
    shadow_timeout_seconds: float = env_field(
        "GMM_SHADOW_TIMEOUT_SECONDS",
        3600.0,
        "A candidate not judged within this time (too little traffic) is rejected",
    )
    min_refit_seconds: float = env_field(
        "GMM_MIN_REFIT_SECONDS",
        60.0,
        "A drift alarm starts a refit at once, but never sooner than this after the last one",
    )
    components: str = env_field(
        "GMM_COMPONENTS",
        "2",
        "Number of mixture components K, or `auto`: chosen by BIC at each refit, from 1 to "
        "GMM_MAX_COMPONENTS",
    )
    max_components: int = env_field(
        "GMM_MAX_COMPONENTS", DEFAULT_MAX_COMPONENTS, "Largest K that GMM_COMPONENTS=auto tries"
    )
    covariance: str = env_field(
        "GMM_COVARIANCE",
        "tied-diag",
        "Covariance type: tied-diag (the tutorial's shared scale), diag, spherical, tied, full",
        choices=(*COVARIANCES, *ALIASES),
    )
    reg_covar: float = env_field(
        "GMM_REG_COVAR",
        DEFAULT_REG_COVAR,
        "Covariance floor, relative to each column's variance (keeps repeated values from "
        "collapsing a component)",
    )
    per_component_scale: bool = env_field(
        "GMM_PER_COMPONENT_SCALE",
        False,
        "Older name for GMM_COVARIANCE=diag (used when GMM_COVARIANCE is tied-diag)",
    )
    window_records: int = env_field(
        "GMM_TRAIN_WINDOW_RECORDS", 100_000, "Fit on at most the newest N input records"
    )
    window_seconds: float = env_field(
        "GMM_TRAIN_WINDOW_SECONDS", 0.0, "...and only those of the last T seconds (0: no limit)"
    )
    window_readers: int = env_field(
        "GMM_TRAIN_READERS",
        1,
        "Processes that read and decode the window's partitions between them (1: the trainer "
        "alone). One process is held to one CPU by the GIL whatever the Kafka client; more pay "
        "where CPUs are free for them (bench/results/window.md). The run loop keeps the next "
        "cycle's readers started between cycles (about 40 MB each while they wait)",
    )
    interval_seconds: float = env_field(
        "GMM_TRAIN_INTERVAL_SECONDS", 300.0, "Seconds between the starts of two refits"
    )
    restarts: int = env_field(
        "GMM_TRAIN_RESTARTS",
        100,
        "Initial candidates per fit (k-means++ seeds; a cold fit refines them by k-means)",
    )
    explore_every: int = env_field(
        "GMM_TRAIN_EXPLORE_EVERY",
        10,
        "Every this many versions, a refit also optimises the best random starts beside the "
        "current model, so a model in a poor local optimum cannot refit into itself for ever "
        "(0: never)",
    )
    min_points: int = env_field(
        "GMM_TRAIN_MIN_POINTS", 0, "Fewest valid points a fit needs (0: 10 per component)"
    )
    max_loss_regression: float = env_field(
        "GMM_TRAIN_MAX_REGRESSION",
        0.5,
        "Reject a fit whose mean log p(x) on the window is this much below the current model's",
    )
    min_weight: float = env_field(
        "GMM_TRAIN_MIN_WEIGHT", 1e-3, "A component lighter than this counts as collapsed"
    )
    posterior: str = env_field(
        "GMM_TRAIN_POSTERIOR",
        "none",
        "After publishing, also sample the posterior with collapsed NUTS into the report",
        choices=("none", "nuts"),
    )
    seed: int = env_field("GMM_SEED", 0, "RNG seed of the fits")
    reports_dir: str = env_field("GMM_REPORTS_DIR", "reports", "Where fit reports are written")
    reports_keep: int = env_field(
        "GMM_REPORTS_KEEP", 20, "Reports of the newest N versions are kept; older ones deleted"
    )
    first_model_retry_seconds: float = env_field(
        "GMM_FIRST_MODEL_RETRY_SECONDS",
        5.0,
        "While no model exists, seconds before a cycle that published nothing is retried",
    )
    metrics_port: int = env_field(
        "GMM_TRAINER_METRICS_PORT", 6067, "Port of the trainer's /metrics (0: none)"
    )
    max_record_bytes: int = env_field(
        "GMM_MAX_RECORD_BYTES",
        65536,
        "Larger input records are left out of the window (counted as oversized)",
    )
    jax_cache_dir: str = jax_cache_dir_field()
    fit_devices: int = env_field(
        "GMM_TRAIN_DEVICES",
        0,
        "Local JAX devices a fit shards the window's points over, each step's sums taken on "
        "all at once (0: every one; 1: one). CPU devices are never sharded over (forced host "
        "devices share one thread pool, on which XLA's batched LAPACK kernels can deadlock): a "
        "CPU host fits on one device, and uses more CPUs through processes",
    )
    params_signing_key: str = env_field(
        "GMM_PARAMS_SIGNING_KEY",
        "",
        "Ed25519 private key (PEM file) that signs every params record published, for workers "
        "with GMM_PARAMS_VERIFY_KEY (docs/security.md); empty: unsigned",
    )
    params_verify_key: str = env_field(
        "GMM_PARAMS_VERIFY_KEY",
        "",
        "Ed25519 public keys (PEM files, comma-separated) whose records the trainer, "
        "`models` and `rollback` read besides the signing key's own: while keys rotate, the "
        "retired key's (docs/security.md); empty: the signing key's only (none: every record)",
    )
    events_verify_key: str = env_field(
        "GMM_EVENTS_VERIFY_KEY",
        "",
        "Ed25519 public keys of the workers (PEM files, comma-separated): act only on shadow "
        "reports and drift alarms signed by one of them (docs/security.md); empty: every event "
        "is taken, safe only while ACLs keep others off GMM_EVENTS_TOPIC",
    )

    def signer(self) -> Signer | None:
        """The signer of GMM_PARAMS_SIGNING_KEY (None: records go unsigned)."""
        from kafka_common.signing import Signer

        return Signer.from_file(self.params_signing_key) if self.params_signing_key else None

    def verifier(self) -> Verifier | None:
        """The keys of GMM_PARAMS_VERIFY_KEY (None: none listed). The publisher adds its
        signer's own key (`Publisher.verifier`)."""
        from kafka_common.signing import Verifier

        return Verifier.from_files(self.params_verify_key) if self.params_verify_key else None

    def events_verifier(self) -> EventVerifier | None:
        """The verifier of GMM_EVENTS_VERIFY_KEY (None: events are not authenticated)."""
        from kafka_common.event_signing import EventVerifier

        return EventVerifier.from_files(self.events_verify_key) if self.events_verify_key else None

    def validate(self) -> None:
        check_model_name(self.model_name)
        self.events_verifier()  # a bad key file: one-line SettingsError
        if self.params_signing_key:
            from kafka_common.signing import Signer

            Signer.from_file(self.params_signing_key)  # a bad file: one-line SettingsError
        self.verifier()  # a bad file: one-line SettingsError
        if self.promotion == "shadow" and not self.events_topic:
            raise SettingsError(
                "GMM_PROMOTION=shadow needs GMM_EVENTS_TOPIC: the workers report their shadow "
                "scores there"
            )
        if self.shadow_records < 1 or not self.shadow_tolerance >= 0:
            raise SettingsError("GMM_SHADOW_RECORDS must be >= 1 and GMM_SHADOW_TOLERANCE >= 0")
        if not self.shadow_timeout_seconds > 0 or not self.min_refit_seconds >= 0:
            raise SettingsError(
                "GMM_SHADOW_TIMEOUT_SECONDS must be > 0 and GMM_MIN_REFIT_SECONDS >= 0"
            )
        if self.history_topic == self.params_topic:
            raise SettingsError("GMM_HISTORY_TOPIC must differ from GMM_PARAMS_TOPIC")
        if self.window_readers < 1:
            raise SettingsError(f"GMM_TRAIN_READERS must be >= 1, got {self.window_readers}")
        if self.fit_devices < 0:
            raise SettingsError(f"GMM_TRAIN_DEVICES must be >= 0, got {self.fit_devices}")
        if self.reports_keep < 1:
            raise SettingsError(f"GMM_REPORTS_KEEP must be >= 1, got {self.reports_keep}")
        if self.first_model_retry_seconds <= 0:
            raise SettingsError(
                f"GMM_FIRST_MODEL_RETRY_SECONDS must be > 0, got {self.first_model_retry_seconds}"
            )
        try:
            parse_components(self.components)
        except ValueError as exc:
            raise SettingsError(f"GMM_COMPONENTS {exc}") from None
        if self.max_components < 1:
            raise SettingsError(f"GMM_MAX_COMPONENTS must be >= 1, got {self.max_components}")
        if not 0 <= self.reg_covar < 1:
            raise SettingsError(f"GMM_REG_COVAR must be in [0, 1), got {self.reg_covar}")
        if self.window_records < 1:
            raise SettingsError(f"GMM_TRAIN_WINDOW_RECORDS must be >= 1, got {self.window_records}")
        if self.window_records < self.smallest_k:
            raise SettingsError(
                f"GMM_TRAIN_WINDOW_RECORDS={self.window_records} cannot fit "
                f"GMM_COMPONENTS={self.components} components"
            )
        if self.interval_seconds <= 0:
            raise SettingsError(
                f"GMM_TRAIN_INTERVAL_SECONDS must be > 0, got {self.interval_seconds}"
            )
        if self.restarts < 1:
            raise SettingsError(f"GMM_TRAIN_RESTARTS must be >= 1, got {self.restarts}")
        if self.explore_every < 0:
            raise SettingsError(f"GMM_TRAIN_EXPLORE_EVERY must be >= 0, got {self.explore_every}")
        if not 0 <= self.metrics_port < 65536:
            raise SettingsError(f"GMM_TRAINER_METRICS_PORT must be a port, got {self.metrics_port}")

    @property
    def n_components(self) -> int | None:
        """K, or None for auto."""
        return parse_components(self.components)

    @property
    def smallest_k(self) -> int:
        return self.n_components or 1

    @property
    def fit_covariance(self) -> str:
        """The covariance type fitted (GMM_PER_COMPONENT_SCALE=true turns tied-diag into diag)."""
        covariance = check_covariance(self.covariance)
        return "diag" if covariance == "tied-diag" and self.per_component_scale else covariance

    @property
    def needed_points(self) -> int:
        return self.min_points or 10 * (self.n_components or self.max_components)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TrainerSettings:
        return load(cls, os.environ if environ is None else environ)


if __name__ == "__main__":
    if "--markdown" in sys.argv:
        print(markdown_table(TrainerSettings), end="")
