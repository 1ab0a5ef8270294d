"""The trainer job against the real broker: fits the stream, keeps labels, guards, versions."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from numpy.testing import assert_allclose
from PIL import Image

from kafka_common.params_topic import history_spec, params_spec, read_newest
from kafka_common.settings import KafkaSettings
from kafka_common.topics import TopicSpec, ensure_topics
from mixture.params import FitMetadata, MixtureParams, ModelParams
from support.harness import (
    Topics,
    count_records,
    produce,
    publish_model,
    run_trainer_once,
    trainer_env,
)
from trainer.cycle import Trainer
from trainer.metrics import TrainerMetrics
from trainer.settings import TrainerSettings


def bimodal(n: int, locs=(2.0, 9.0), weights=(0.3, 0.7), scale=1.0, seed=0, prefix="b"):
    rng = np.random.default_rng(seed)
    z = rng.random(n) < weights[0]
    xs = np.where(z, rng.normal(locs[0], scale, n), rng.normal(locs[1], scale, n))
    return [
        (None, json.dumps({"id": f"{prefix}-{i}", "x": float(x)}).encode())
        for i, x in enumerate(xs)
    ]


def settings(bootstrap: str, topics: Topics, tmp_path, **env: str) -> TrainerSettings:
    return TrainerSettings.from_env(
        {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "GMM_INPUT_TOPIC": topics.input,
            "GMM_PARAMS_TOPIC": topics.params,
            "GMM_HISTORY_TOPIC": topics.history,
            "GMM_REPORTS_DIR": str(tmp_path / "reports"),
            "GMM_TRAIN_WINDOW_RECORDS": "3000",
            "GMM_TRAIN_RESTARTS": "20",
            **env,
        }
    )


def cycle(s: TrainerSettings):
    """One cycle of a freshly started trainer (as `gmm-trainer run --once` does)."""

    async def go():
        await ensure_topics(
            s.kafka,
            [
                TopicSpec(s.input_topic, 2),
                params_spec(s.params_topic),
                history_spec(s.history_topic),
            ],
        )
        trainer = Trainer(s, TrainerMetrics())
        await trainer.load_current()
        return await trainer.cycle(), trainer.metrics

    return asyncio.run(go())


def newest(bootstrap: str, topic: str) -> ModelParams | None:
    return asyncio.run(read_newest(KafkaSettings(bootstrap_servers=bootstrap), topic, "gmm"))


def test_fits_the_stream_and_a_worker_picks_it_up(kafka_bootstrap, start_worker, tmp_path):
    topics = Topics("train")
    s = settings(kafka_bootstrap, topics, tmp_path)
    asyncio.run(ensure_topics(s.kafka, [TopicSpec(topics.input, 2)]))
    produce(kafka_bootstrap, topics.input, bimodal(3000))
    worker = start_worker(topics)
    worker.wait_serving()

    outcome, metrics = cycle(s)
    assert outcome.published is not None and outcome.published.version == 1
    m = outcome.published.mixture
    assert_allclose(m.locs[:, 0], [2.0, 9.0], atol=0.15)  # ordered by location: 0 is the lower mode
    assert_allclose(m.weights, [0.3, 0.7], atol=0.03)
    assert_allclose(m.scale, [1.0], atol=0.06)
    assert worker.wait_ready()["model_version"] == 1

    # Every version has its report, and the pictures open as images.
    for name in ("loss.png", "grad_norms.png", "density.png"):
        with Image.open(outcome.report / name) as image:
            image.verify()
    summary = json.loads((outcome.report / "summary.json").read_text())
    assert summary["window"] == 3000 and {"aic", "bic", "final_loss"} <= set(summary)
    # Each fit's speed and memory, in its report and as metrics.
    assert_allclose(
        summary["fit_points_per_second"], summary["fitted_points"] / summary["fit_seconds"]
    )
    assert summary["fit_peak_rss_bytes"] > 50 * 2**20  # JAX alone holds more than this
    sample = metrics.registry.get_sample_value
    assert sample("gmm_trainer_fit_points_per_second") == summary["fit_points_per_second"]
    assert sample("gmm_trainer_fit_peak_rss_bytes") == summary["fit_peak_rss_bytes"]


def test_slow_drift_keeps_the_labels(kafka_bootstrap, tmp_path):
    topics = Topics("drift")
    s = settings(kafka_bootstrap, topics, tmp_path)
    # The current model lists the upper mode first; a refit must keep that, not re-sort.
    current = ModelParams(
        4,
        MixtureParams([0.7, 0.3], [[9.0], [2.0]], [1.0]),
        FitMetadata(fitted_at="2026-01-01T00:00:00+00:00"),
    )
    asyncio.run(ensure_topics(s.kafka, [TopicSpec(topics.params, 1, compact=True)]))
    publish_model(kafka_bootstrap, topics.params, current)
    produce(kafka_bootstrap, topics.input, bimodal(3000, locs=(2.3, 9.3), seed=1))  # +0.3 scale

    outcome, _ = cycle(s)
    assert outcome.published is not None and outcome.published.version == 5
    m = outcome.published.mixture
    assert_allclose(m.locs[:, 0], [9.3, 2.3], atol=0.15)
    assert_allclose(m.weights, [0.7, 0.3], atol=0.03)


@pytest.mark.parametrize(
    ("records", "reason"),
    [
        ([(None, b'{"x": 4.5}')] * 200, "zero_variance"),
        ([(None, b'{"x": NaN}')] * 100 + [(None, b'{"x": 1e999}')] * 100, "too_few_points"),
        ([(None, b'{"x": 1.0}')], "too_few_points"),
    ],
    ids=["identical", "nans-only", "fewer-than-k"],
)
def test_unfit_windows_publish_nothing(kafka_bootstrap, tmp_path, records, reason):
    topics = Topics("guard")
    s = settings(kafka_bootstrap, topics, tmp_path)
    asyncio.run(ensure_topics(s.kafka, [TopicSpec(topics.input, 2)]))
    produce(kafka_bootstrap, topics.input, records)
    outcome, metrics = cycle(s)
    assert outcome.published is None and outcome.reason == reason
    assert metrics.rejected.labels(reason=reason)._value.get() == 1
    assert count_records(kafka_bootstrap, topics.params) == 0
    if reason == "too_few_points" and len(records) > 1:
        assert outcome.invalid == {"not_finite": 200}  # NaN tokens and 1e999 overflows


def test_versions_continue_across_restarts_through_the_cli(kafka_bootstrap, tmp_path):
    topics = Topics("restart")
    s = settings(kafka_bootstrap, topics, tmp_path)
    asyncio.run(
        ensure_topics(
            s.kafka, [TopicSpec(topics.input, 2), TopicSpec(topics.params, 1, compact=True)]
        )
    )
    publish_model(
        kafka_bootstrap,
        topics.params,
        ModelParams(7, MixtureParams([0.3, 0.7], [[2.0], [9.0]], [1.0])),
    )
    produce(kafka_bootstrap, topics.input, bimodal(3000, seed=2))
    env = trainer_env(kafka_bootstrap, topics, tmp_path / "r", GMM_TRAIN_WINDOW_RECORDS="3000")
    for expected, extra in ((8, []), (9, ["--posterior", "nuts"])):  # two trainer processes
        done = run_trainer_once(env, *extra)
        assert done.returncode == 0, done.stderr[-2000:]
        assert json.loads(done.stdout.splitlines()[-1])["version"] == expected
    # The second also sampled the posterior with NUTS, after publishing, into its report.
    posterior = json.loads((tmp_path / "r" / "gmm" / "v9" / "posterior.json").read_text())
    assert posterior["divergences"] >= 0 and "r_hat" in posterior["summary"]["locs"]
    with Image.open(tmp_path / "r" / "gmm" / "v9" / "trace.png") as image:
        image.verify()
    assert newest(kafka_bootstrap, topics.params).version == 9

    # A window that cannot be fit: exit code 3 and the reason on stdout.
    topics2 = Topics("restart-empty")
    env.update(
        GMM_INPUT_TOPIC=topics2.input,
        GMM_PARAMS_TOPIC=topics2.params,
        GMM_HISTORY_TOPIC=topics2.history,
    )
    done = run_trainer_once(env)
    assert done.returncode == 3
    assert json.loads(done.stdout.splitlines()[-1])["reason"] == "too_few_points"


def test_unreachable_broker_is_one_line(tmp_path):
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}
    done = subprocess.run(
        [sys.executable, "-m", "trainer.cli", "run", "--once"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("gmm-trainer: error: cannot reach Kafka at 127.0.0.1:1")


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({"GMM_TRAIN_MAX_REGRESSION": "-1"}, "worse_than_current"),  # must beat it by 1 nat/point
        ({"GMM_TRAIN_MIN_WEIGHT": "0.5"}, "collapsed"),  # the 0.3 component counts as collapsed
    ],
)
def test_guards_keep_the_last_good_model(kafka_bootstrap, tmp_path, env, reason):
    topics = Topics("guard2")
    s = settings(kafka_bootstrap, topics, tmp_path, **env)
    asyncio.run(ensure_topics(s.kafka, [TopicSpec(topics.params, 1, compact=True)]))
    good = ModelParams(3, MixtureParams([0.3, 0.7], [[2.0], [9.0]], [1.0]))
    publish_model(kafka_bootstrap, topics.params, good)
    produce(kafka_bootstrap, topics.input, bimodal(3000, seed=3))
    outcome, metrics = cycle(s)
    assert outcome.published is None and outcome.reason == reason
    assert metrics.rejected.labels(reason=reason)._value.get() == 1
    assert newest(kafka_bootstrap, topics.params).version == 3


def test_auto_k_full_covariance_and_missing_values_on_the_stream(kafka_bootstrap, tmp_path):
    """GMM_COMPONENTS=auto with GMM_COVARIANCE=full: K chosen by BIC on a 2-D stream with
    correlated clusters, some coordinates null; a second cycle on a window of another size
    compiles nothing new (padded windows)."""
    topics = Topics("autok")
    rng = np.random.default_rng(5)
    x = np.concatenate(
        [
            rng.multivariate_normal([0, 0], [[1, 0.8], [0.8, 1]], 700),
            rng.multivariate_normal([6, 2], [[1, -0.6], [-0.6, 1]], 500),
        ]
    )
    rows = [[float(a), float(b)] for a, b in x]
    for i in range(0, len(rows), 10):
        rows[i][i % 2] = None  # one point in ten has a missing coordinate
    records = [(None, json.dumps({"id": f"a{i}", "x": r}).encode()) for i, r in enumerate(rows)]
    produce(kafka_bootstrap, topics.input, records)
    env = {"GMM_COMPONENTS": "auto", "GMM_MAX_COMPONENTS": "3", "GMM_COVARIANCE": "full"}
    s = settings(kafka_bootstrap, topics, tmp_path, GMM_TRAIN_WINDOW_RECORDS="1100", **env)

    outcome, metrics = cycle(s)
    model = outcome.published
    assert model is not None and model.covariance == "full"
    assert model.mixture.n_components == 2
    assert set(model.metadata.extra["bic_by_components"]) == {"1", "2", "3"}
    assert_allclose(model.mixture.locs, [[0, 0], [6, 2]], atol=0.2)
    compiled = metrics.registry.get_sample_value("gmm_trainer_compilations_total")
    assert compiled > 0

    # Refits in the same process, warm-started, on windows of other sizes that pad to the same
    # size (1,536): the first warm refit compiles the warm path once, the next compiles nothing.
    async def refit(window: int) -> None:
        trainer = Trainer(
            TrainerSettings.from_env(
                {**_env_of(s), "GMM_TRAIN_WINDOW_RECORDS": str(window), **env}
            ),
            metrics,
        )
        await trainer.load_current()
        assert (await trainer.cycle()).window == window

    asyncio.run(refit(1050))
    compiled = metrics.registry.get_sample_value("gmm_trainer_compilations_total")
    asyncio.run(refit(1030))
    assert metrics.registry.get_sample_value("gmm_trainer_compilations_total") == compiled


def _env_of(s: TrainerSettings) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": ",".join(s.kafka.servers),
        "GMM_INPUT_TOPIC": s.input_topic,
        "GMM_PARAMS_TOPIC": s.params_topic,
        "GMM_HISTORY_TOPIC": s.history_topic,
        "GMM_REPORTS_DIR": s.reports_dir,
        "GMM_TRAIN_RESTARTS": str(s.restarts),
    }
