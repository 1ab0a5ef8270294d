"""The worker as built by Worker: its record path (RecordPath.handle) on in-memory fakes: one
model per batch, slices, failures that halt it, a stop in the middle of a batch; and shadow
scoring beside it."""

from __future__ import annotations

import asyncio
import gc
import json
import threading

import numpy as np
import pytest

from mixture.classify import make_classifier
from mixture.params import MixtureParams, ModelParams
from stream_app import shadow as shadow_module
from stream_app.checkpoint import Checkpoint
from stream_app.delivery import Delivery
from stream_app.gc_policy import STREAM_GC_THRESHOLD
from stream_app.model_state import ServingModel
from stream_app.records import InRecord
from stream_app.settings import WorkerSettings
from stream_app.shadow import compare
from stream_app.source import InBatch
from stream_app.worker import Worker
from tests.unit.stream_app.fakes import TP0, FakeCommitter, FakeSink

PARAMS = MixtureParams(np.array([0.4, 0.6]), np.array([[0.0], [10.0]]), np.array([1.0]))


@pytest.fixture(scope="module")
def classifier():
    clf = make_classifier(2, 1, max_batch=1024)
    clf.warmup()
    return clf


def make_worker(classifier, **env: str) -> tuple[Worker, FakeSink, FakeCommitter, list[str]]:
    settings = WorkerSettings.from_env({"GMM_SLICE_RECORDS": "256", **env})
    stops: list[str] = []
    worker = Worker(settings, terminate=stops.append)
    sink, committer = FakeSink(batch_size=64), FakeCommitter()
    worker.use(
        Delivery(sink, worker.metrics, backoff=(0.001, 0.004)),
        Checkpoint(committer, worker.metrics, on_fatal=worker.halt),
    )
    worker.holder.current = ServingModel(
        ModelParams(3, PARAMS), classifier, classifier.prepare(PARAMS)
    )
    return worker, sink, committer, stops


def batch(number: int, n: int, start: int = 0) -> InBatch:
    records = [
        InRecord(None, json.dumps({"x": float(i % 20)}).encode(), "points", 0, start + i, None)
        for i in range(n)
    ]
    return InBatch(number, records, {TP0: start + n})


async def test_a_batch_larger_than_a_slice_is_delivered_then_committed(classifier):
    worker, sink, committer, _ = make_worker(classifier)
    worker.path.checkpoint.fetched(0, {TP0: 600})
    await worker.handle(batch(0, 600))
    await worker.path.checkpoint.settled(5)
    await worker.path.checkpoint.commit_now()
    assert sorted(o.source["offset"] for o in sink.acked) == list(range(600))
    assert committer.last == {TP0: 600}
    versions = {json.loads(o.value)["model_version"] for o in sink.acked}
    assert versions == {3}


async def test_one_model_per_batch_even_if_a_new_one_is_installed_midway(classifier):
    worker, sink, _, _ = make_worker(classifier)
    original = worker.path._classify
    swapped = []

    def classify_then_swap(parsed, serving):
        out = original(parsed, serving)
        if not swapped:  # a new version arrives after the first slice
            worker.holder.current = worker.holder.current._replace(model=ModelParams(4, PARAMS))
            swapped.append(True)
        return out

    worker.path._classify = classify_then_swap  # type: ignore[method-assign]
    worker.path.checkpoint.fetched(0, {TP0: 600})
    await worker.handle(batch(0, 600))
    await worker.path.checkpoint.settled(5)
    assert {json.loads(o.value)["model_version"] for o in sink.acked} == {3}


async def test_inference_that_raises_halts_the_worker_uncommitted(classifier):
    worker, _sink, committer, stops = make_worker(classifier)

    def broken(parsed, serving):
        raise FloatingPointError("device lost")

    worker.path.checkpoint.fetched(0, {TP0: 10})
    await worker.handle(batch(0, 10))
    worker.path._classify = broken  # type: ignore[method-assign]
    worker.path.checkpoint.fetched(1, {TP0: 20})
    await worker.handle(batch(1, 10, start=10))
    worker.path.checkpoint.fetched(2, {TP0: 30})
    await worker.path.checkpoint.stop(1)
    assert committer.last == {TP0: 10}  # batch 0 only: nothing at or past the failure
    assert worker.exit_code == 1 and len(stops) == 1 and "device lost" in stops[0]
    assert worker.readiness()[0] is False


async def test_a_stop_in_the_middle_of_a_batch_finishes_it_then_commits(classifier):
    worker, sink, committer, _ = make_worker(classifier)
    gate = asyncio.get_running_loop().create_future()
    sink.decide = lambda b, attempt: gate
    worker.path.checkpoint.fetched(0, {TP0: 600})
    handling = asyncio.ensure_future(worker.handle(batch(0, 600)))
    while not sink.sends:  # the first slice is out, the rest still to classify
        await asyncio.sleep(0.001)
    stop = asyncio.create_task(worker.path.checkpoint.stop(10))
    await asyncio.sleep(0.05)
    assert not stop.done()
    gate.set_result(None)
    await asyncio.wait_for(stop, 10)
    await handling
    offsets = sorted(o.source["offset"] for o in sink.acked)
    assert offsets == list(range(600))  # all slices, each once
    assert committer.last == {TP0: 600}  # so a restart repeats none of them


async def test_temperature_one_draws_are_a_function_of_the_record(classifier):
    clf = make_classifier(2, 1, temperature=1, max_batch=1024)
    results = []
    for seed in ("5", "5", "6"):
        worker, sink, _, _ = make_worker(classifier, GMM_TEMPERATURE="1", GMM_SEED=seed)
        worker.holder.current = ServingModel(ModelParams(3, PARAMS), clf, clf.prepare(PARAMS))
        half = InBatch(
            0,
            [InRecord(None, b'{"x": 5.0}', "points", 0, i, None) for i in range(300)],
            {TP0: 300},
        )
        worker.path.checkpoint.fetched(0, half.offsets)
        await worker.handle(half)
        await worker.path.checkpoint.settled(5)
        by_offset = {o.source["offset"]: json.loads(o.value)["assignment"] for o in sink.acked}
        results.append([by_offset[i] for i in range(300)])
    assert results[0] == results[1]  # replayed: the same draws
    assert results[0] != results[2]  # another seed: other draws
    assert 0.2 < np.mean(results[0]) < 0.8  # x=5 sits between the components: both drawn


async def test_a_candidate_withdrawn_while_it_scores_leaves_no_totals_or_series(
    classifier, monkeypatch
):
    worker, sink, _, _ = make_worker(classifier)
    worker.shadow.candidate.current = ServingModel(
        ModelParams(4, PARAMS), classifier, classifier.prepare(PARAMS)
    )
    scoring, release = threading.Event(), threading.Event()

    def held_compare(served, candidate):
        scoring.set()
        assert release.wait(10)
        return compare(served, candidate)

    monkeypatch.setattr(shadow_module, "compare", held_compare)
    worker.path.checkpoint.fetched(0, {TP0: 100})
    handling = asyncio.ensure_future(worker.handle(batch(0, 100)))
    while not scoring.is_set():
        await asyncio.sleep(0.001)
    await worker.models.candidate(None)  # the promotion or withdrawal arrives mid-score
    release.set()
    await handling
    await worker.path.checkpoint.settled(5)
    assert len(sink.acked) == 100  # serving went on
    assert worker.shadow.scores.current is None
    assert worker.shadow.scores.to_report() is None  # no report for a withdrawn candidate
    records = worker.metrics.registry.get_sample_value(
        "gmm_shadow_records_total", {"candidate_version": "4"}
    )
    assert records is None  # its series stays forgotten


async def test_a_candidates_report_carries_its_digest(classifier):
    from wire.shadow_report import model_digest

    worker, _, _, _ = make_worker(classifier)
    candidate = ModelParams(4, PARAMS)
    worker.shadow.candidate.current = ServingModel(
        candidate, classifier, classifier.prepare(PARAMS)
    )
    worker.path.checkpoint.fetched(0, {TP0: 100})
    await worker.handle(batch(0, 100))
    await worker.path.checkpoint.settled(5)
    report = worker.shadow.scores.to_report()
    assert report is not None and report.version == 4 and report.totals.records == 100
    # Bound to the candidate's content: the trainer counts it for this candidate only.
    assert report.candidate_digest == model_digest(ModelParams.loads(candidate.dumps()))
    assert report.to_event("gmm").data["candidate_digest"] == report.candidate_digest


def test_a_worker_with_an_events_key_signs_its_events(classifier, tmp_path):
    from kafka_common.event_signing import EventVerifier
    from kafka_common.settings import SettingsError
    from kafka_common.signing import keygen

    private, public, key_id = keygen(tmp_path / "k")
    worker, *_ = make_worker(classifier, GMM_EVENTS_SIGNING_KEY=str(private))
    producer = worker.events.producer
    assert producer is not None and producer.signer is not None
    assert producer.signer.key_id == key_id == EventVerifier.from_files([public]).key_ids[0]
    unsigned, *_ = make_worker(classifier)
    assert unsigned.events.producer is not None and unsigned.events.producer.signer is None
    with pytest.raises(SettingsError, match="GMM_EVENTS_SIGNING_KEY"):
        WorkerSettings.from_env({"GMM_EVENTS_SIGNING_KEY": str(public)})


async def test_streaming_runs_with_rare_young_collections_and_restores_them(classifier):
    """While it streams, the worker's young garbage collections wait for STREAM_GC_THRESHOLD
    allocations (the records' objects die by reference counting); when it stops, the
    interpreter's thresholds are as before."""
    worker, *_ = make_worker(classifier)
    before = gc.get_threshold()
    seen: list[tuple[int, int, int]] = []

    async def feed(put):
        seen.append(gc.get_threshold())

    worker.path.feed = feed  # type: ignore[method-assign]
    worker.holder.ready.set()
    await worker.feed(lambda b: asyncio.sleep(0))
    assert seen == [(STREAM_GC_THRESHOLD, *before[1:])]
    assert before[0] < STREAM_GC_THRESHOLD
    assert gc.get_threshold() == before
