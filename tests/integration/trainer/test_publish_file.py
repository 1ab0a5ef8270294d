"""`gmm-trainer publish --params FILE --data FILE` on the real broker: a model fitted in a
notebook (the scikit-learn estimator) is published as the next version through the trainer's
guards, compare-and-set and signing; what a guard refuses, a broken file and a race with another
publisher each have their own outcome, and nothing is published twice."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import numpy as np
import pytest

from kafka_common import params_topic
from kafka_common.params_topic import StaleState, read_all, read_state
from kafka_common.signing import Verifier, keygen
from mixture.estimator import MapGaussianMixture
from mixture.params import MixtureParams, ModelParams
from support.harness import Topics, produce, trainer_env
from tests.integration.trainer.test_lifecycle import cli, kafka, make_topics, publisher_of
from trainer.publish_file import publish_params
from trainer.settings import TrainerSettings


def points(seed: int = 0, n: int = 400) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal([0, 0], 1, (n // 2, 2)), rng.normal([8, 3], 1, (n // 2, 2))])


def write_csv(path, x: np.ndarray) -> None:
    path.write_text("a,b\n" + "".join(f"{float(u)!r},{float(v)!r}\n" for u, v in x))


def test_publish_a_notebook_model_through_the_guards(kafka_bootstrap, tmp_path):
    topics = Topics("pubfile")
    make_topics(kafka_bootstrap, topics)
    signing, verify, _ = keygen(tmp_path / "key")
    env = trainer_env(kafka_bootstrap, topics, tmp_path / "r", GMM_PARAMS_SIGNING_KEY=str(signing))
    x = points()
    data = tmp_path / "points.csv"
    write_csv(data, x)
    est = MapGaussianMixture(2, covariance_type="full", random_state=0).fit(x)
    good = tmp_path / "good.json"
    good.write_text(est.to_params(version=41).dumps())

    first = cli(env, "publish", "--params", str(good), "--data", str(data))
    assert first.returncode == 0, first.stderr
    assert "version 1 as served" in first.stderr and "no served model" in first.stderr
    # Refused: far worse on the data than the served version (exit 3, one line, nothing sent).
    m = est.params_
    worse = dataclasses.replace(est.to_params(), mixture=m._replace(scale=m.scale * 4.0))
    bad_path = tmp_path / "worse.json"
    bad_path.write_text(worse.dumps())
    refused = cli(env, "publish", "--params", str(bad_path), "--data", str(data))
    assert refused.returncode == 3, refused.stderr
    assert "refused (worse_than_current)" in refused.stderr
    assert "against version 1" in refused.stderr and len(refused.stderr.splitlines()) == 1
    # Refused: a model of another dimension than the data (and the served model).
    three = ModelParams(0, MixtureParams([1.0], [[0.0, 0.0, 0.0]], [1.0, 1.0, 1.0]))
    three_path = tmp_path / "three.json"
    three_path.write_text(three.dumps())
    wrong = cli(env, "publish", "--params", str(three_path), "--data", str(data))
    assert wrong.returncode == 3 and "dimension_mismatch" in wrong.stderr, wrong.stderr
    # Errors: a file that is not a servable record, data that cannot be read (exit 2).
    broken = tmp_path / "broken.json"
    broken.write_text('{"schema": "gmm-params/2", "covariance": "full", "version": 1}')
    for args, says in (
        (["--params", str(broken), "--data", str(data)], "not a params record"),
        (["--params", str(tmp_path / "none.json"), "--data", str(data)], "cannot read"),
        (["--params", str(good), "--data", str(tmp_path / "none.csv")], "cannot read"),
    ):
        out = cli(env, "publish", *args)
        assert out.returncode == 2 and says in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1
    # A retry of the same file publishes nothing; a refit on other points, its components in
    # the other order, is published as version 2 with version 1's labels.
    retry = cli(env, "publish", "--params", str(good), "--data", str(data))
    assert retry.returncode == 0 and "nothing published" in retry.stderr, retry.stderr
    refit = MapGaussianMixture(2, covariance_type="full", random_state=0).fit(points(5))
    swapped = refit.to_params()
    m = swapped.mixture
    swapped = dataclasses.replace(
        swapped, mixture=MixtureParams(m.weights[::-1], m.locs[::-1], m.scale[::-1])
    )
    again = tmp_path / "again.json"
    again.write_text(swapped.dumps())
    out = tmp_path / "published.json"
    second = cli(env, "publish", "--params", str(again), "--data", str(data), "--out", str(out))
    assert second.returncode == 0 and "version 2 as served" in second.stderr, second.stderr
    assert ModelParams.loads(out.read_text()).version == 2
    history = asyncio.run(
        read_all(
            kafka(kafka_bootstrap), topics.history, "gmm", verifier=Verifier.from_files([verify])
        )
    )
    assert [h.version for h in history] == [1, 2]  # signed (read through the verifier), once each
    assert {h.metadata.extra["published_by"] for h in history} == {"cli"}
    np.testing.assert_allclose(history[1].mixture.locs, history[0].mixture.locs, atol=0.5)
    assert history[1].metadata.extra["judged_on"] == {str(data): 400}
    listed = cli(env, "models", "--json")
    assert [r["version"] for r in json.loads(listed.stdout)] == [1, 2]


def test_shadow_mode_publishes_a_candidate(kafka_bootstrap, tmp_path):
    topics = Topics("pubshadow")
    make_topics(kafka_bootstrap, topics)
    env = trainer_env(kafka_bootstrap, topics, tmp_path / "r", GMM_PROMOTION="shadow")
    x = points(1)
    data = tmp_path / "points.csv"
    write_csv(data, x)
    path = tmp_path / "p.json"
    path.write_text(MapGaussianMixture(2, random_state=0).fit(x).to_params().dumps())
    first = cli(env, "publish", "--params", str(path), "--data", str(data))
    assert first.returncode == 0 and "as served" in first.stderr, first.stderr  # nothing to shadow
    path.write_text(MapGaussianMixture(2, random_state=0).fit(points(6)).to_params().dumps())
    second = cli(env, "publish", "--params", str(path), "--data", str(data))
    assert second.returncode == 0 and "version 2 as candidate" in second.stderr, second.stderr
    served, candidate, _ = asyncio.run(read_state(kafka(kafka_bootstrap), topics.params, "gmm"))
    assert served.version == 1 and candidate.version == 2


def test_a_version_published_while_judging_is_never_overtaken(
    kafka_bootstrap, tmp_path, monkeypatch
):
    topics = Topics("pubrace")
    make_topics(kafka_bootstrap, topics)
    env = trainer_env(kafka_bootstrap, topics, tmp_path / "r")
    for key in ("GMM_PROMOTION",):
        env.pop(key, None)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    for name in ("GMM_PARAMS_TOPIC", "GMM_HISTORY_TOPIC", "GMM_INPUT_TOPIC"):
        monkeypatch.setenv(name, env[name])
    settings = TrainerSettings.from_env()
    x = points(2)
    model = MapGaussianMixture(2, random_state=0).fit(x).to_params()
    other = publisher_of(kafka_bootstrap, topics)
    real = params_topic.read_state
    calls = []

    async def then_another(*args, **kwargs):  # type: ignore[no-untyped-def]
        state = await real(*args, **kwargs)
        if not calls:  # after the guards' read, another publisher takes version 1
            calls.append("another")  # (its own reads pass through)
            await other.publish(model, "trainer")
        return state

    monkeypatch.setattr(params_topic, "read_state", then_another)
    with pytest.raises(StaleState):
        asyncio.run(publish_params(settings, model, ("points", x)))
    monkeypatch.setattr(params_topic, "read_state", real)
    history = asyncio.run(read_all(kafka(kafka_bootstrap), topics.history, "gmm"))
    assert [(h.version, h.metadata.extra["published_by"]) for h in history] == [(1, "trainer")]
    # Run again: judged against version 1 now, which already serves these parameters.
    done = asyncio.run(publish_params(settings, model, ("points", x)))
    assert done.compared_with == 1 and done.stage == "unchanged" and done.model.version == 1
    refit = MapGaussianMixture(2, random_state=0).fit(points(7)).to_params()
    done = asyncio.run(publish_params(settings, refit, ("points", x)))
    assert done.compared_with == 1 and done.model is not None and done.model.version == 2


def test_the_input_window_judges_too(kafka_bootstrap, tmp_path):
    """Points of the stream (here 1-D) judge a file's model as the trainer's window would: a
    2-D model, with a 2-D file that agrees with it, is refused."""
    topics = Topics("pubwindow")
    make_topics(kafka_bootstrap, topics)
    env = trainer_env(kafka_bootstrap, topics, tmp_path / "r")
    produce(
        kafka_bootstrap,
        topics.input,
        [(f"k{i}".encode(), json.dumps({"x": float(i % 7)}).encode()) for i in range(200)],
    )
    x = points(3)
    data = tmp_path / "points.csv"
    write_csv(data, x)
    path = tmp_path / "p.json"
    path.write_text(MapGaussianMixture(2, random_state=0).fit(x).to_params().dumps())
    out = cli(env, "publish", "--params", str(path), "--data", str(data))
    assert out.returncode == 3, out.stderr
    assert "refused (dimension_mismatch): input window: 1 coordinate(s)" in out.stderr
    # Without a file, the window alone judges: a 1-D model of the stream passes.
    one = MapGaussianMixture(2, covariance_type="diag", random_state=0).fit(
        (np.arange(200) % 7.0)[:, None]
    )
    path.write_text(one.to_params().dumps())
    ok = cli(env, "publish", "--params", str(path))
    assert ok.returncode == 0, ok.stderr
    assert "judged on 200 points of the input window against no served model" in ok.stderr
