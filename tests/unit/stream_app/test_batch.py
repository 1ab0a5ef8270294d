"""A micro-batch: every input yields one output, assignment or dead letter, in order."""

from __future__ import annotations

import base64
import json

import jax
import numpy as np
import pytest
from numpy.testing import assert_allclose

from mixture.classify import make_classifier
from mixture.params import MixtureParams, ModelParams
from stream_app import batch as batch_module
from stream_app.batch import classify_slice, encode_slice, parse_slice
from stream_app.model_state import ServingModel
from stream_app.records import InRecord, cut_key, refused_letter
from tests.unit.stream_app.fakes import process_batch, reasons
from wire import assignment

PARAMS = MixtureParams(
    np.array([0.375, 0.625]), np.array([[0.4989], [10.9845]]), np.array([0.6514])
)


def serving(temperature: int) -> ServingModel:
    clf = make_classifier(2, 1, temperature=temperature, max_batch=64)
    return ServingModel(ModelParams(7, PARAMS), clf, clf.prepare(PARAMS))


def rec(value: bytes | None, offset: int, key: bytes | None = b"k") -> InRecord:
    return InRecord(key, value, "points", 3, offset, 1_700_000_000.5)


@pytest.mark.parametrize("temperature", [0, 1])
def test_valid_and_invalid_records(temperature):
    records = [
        rec(b'{"id": "a", "x": 0.2}', 10),
        rec(b"garbage", 11),
        rec(b'{"x": 11.5}', 12, key=None),
        rec(None, 13),
        rec(b'{"x": [1, 2]}', 14),
    ]
    key = jax.random.PRNGKey(0) if temperature else None
    out = process_batch(records, serving(temperature), 1024, key)
    assert len(out.assignments) + len(out.dead_letters) == len(records)
    docs = [json.loads(o.value) for o in out.assignments]
    assert [d["id"] for d in docs] == ["a", "points:3:12"]  # topic:partition:offset stands in
    assert [d["assignment"] for d in docs] == [0, 1]
    assert docs[0]["x"] == 0.2 and docs[0]["model_version"] == 7
    assert_allclose([sum(d["probs"]) for d in docs], 1.0, atol=1e-6)
    assert docs[0]["source"] == {"topic": "points", "partition": 3, "offset": 10}
    assert docs[0]["ts_in"] == 1_700_000_000.5 and docs[0]["ts_out"] >= docs[0]["ts_in"]
    assert [o.key for o in out.assignments] == [b"k", None]  # keys kept
    assert reasons(out) == ["not_json", "tombstone", "wrong_dim"]
    dead = json.loads(out.dead_letters[0].value)
    assert base64.b64decode(dead["payload_base64"]) == b"garbage"
    assert dead["payload_text"] == "garbage"
    assert dead["source"]["offset"] == 11 and dead["error"]
    assert out.components.tolist() == [0, 1]
    # one log p(x) per delivered assignment, in order: the one in each assignment's record
    assert_allclose(out.log_likelihoods, [d["log_likelihood"] for d in docs], rtol=1e-6)
    assert out.log_likelihood_sum == pytest.approx(out.log_likelihoods.sum())
    assert np.isfinite(out.log_likelihood_sum)


def test_a_batch_of_only_bad_records_skips_inference():
    out = process_batch([rec(b"[]", 1), rec(b"\xff", 2)], serving(0), 1024)
    assert out.assignments == [] and len(out.dead_letters) == 2
    assert out.log_likelihoods.shape == (0,) and out.log_likelihood_sum == 0.0
    assert json.loads(out.dead_letters[1].value)["payload_text"] is None  # not UTF-8
    assert out.inference_seconds == 0.0


def test_oversized_records_are_dead_lettered():
    out = process_batch([rec(b'{"x": 1, "p": "' + b"a" * 200 + b'"}', 1)], serving(0), 100)
    assert reasons(out) == ["oversized"]


def test_points_the_model_cannot_score_are_dead_lettered_not_nan():
    tiny = MixtureParams(np.array([0.5, 0.5]), np.array([[0.0], [1.0]]), np.array([1e-12]))
    clf = make_classifier(2, 1, max_batch=64)
    model = ServingModel(ModelParams(1, tiny), clf, clf.prepare(tiny))
    out = process_batch([rec(b'{"x": 1e14}', 1), rec(b'{"x": 0.0}', 2)], model, 1024)
    assert reasons(out) == ["not_classifiable"]
    assert len(out.assignments) == 1 and out.components.tolist() == [0]
    assert out.log_likelihoods.shape == (1,) and np.isfinite(out.log_likelihoods).all()


def test_record_keys_depend_on_the_record_alone():
    from stream_app.batch import record_keys

    a = [rec(b"{}", o) for o in (5, 6, 7)]
    b = [rec(b"{}", o) for o in (7, 5)]
    ka, kb = record_keys(1, a), record_keys(1, b)
    assert ka.shape == (3, 2) and ka.dtype == np.uint32
    assert (kb[0] == ka[2]).all() and (kb[1] == ka[0]).all()  # position does not matter
    assert len({tuple(k) for k in ka}) == 3
    assert not (record_keys(2, a) == ka).all(axis=1).any()  # another seed: other keys
    other_topic = [InRecord(b"k", b"{}", "other", 3, 5, None)]
    assert not (record_keys(1, other_topic)[0] == ka[0]).all()


def test_missing_coordinates_are_marginalised_and_listed():
    params = MixtureParams(
        np.array([0.5, 0.5]), np.array([[0.0, 0.0], [10.0, -10.0]]), np.array([1.0, 1.0])
    )
    clf = make_classifier(2, 2, max_batch=64)
    model = ServingModel(ModelParams(3, params), clf, clf.prepare(params))
    records = [
        rec(b'{"id": "a", "x": [9.0, null]}', 0),
        rec(b'{"id": "b", "x": [null, 0.5]}', 1),
        rec(b'{"id": "c", "x": [null, null]}', 2),
        rec(b'{"id": "d", "x": [0.5, 0.5]}', 3),
    ]
    out = process_batch(records, model, 1024, None)
    docs = {d["id"]: d for d in (json.loads(o.value) for o in out.assignments)}
    assert reasons(out) == ["no_observed_values"]
    assert (docs["a"]["assignment"], docs["a"]["missing"], docs["a"]["x"]) == (1, [1], [9.0, None])
    assert (docs["b"]["assignment"], docs["b"]["missing"]) == (0, [0])
    assert "missing" not in docs["d"]
    # The marginal of one coordinate: log N(9; 10, 1) and N(9; 0, 1), weighted.
    want = np.logaddexp(np.log(0.5) - 0.5 * 81, np.log(0.5) - 0.5) - 0.5 * np.log(2 * np.pi)
    assert_allclose(docs["a"]["log_likelihood"], want, rtol=1e-5)


def test_a_cut_key_is_described_in_assignments_dead_letters_and_stand_ins():
    key, cut = cut_key(b"q" * 10_000, 64)
    records = [
        InRecord(key, b'{"id": "a", "x": 0.2}', "points", 3, 1, None, cut),
        InRecord(key, b"garbage", "points", 3, 2, None, cut),
        InRecord(b"plain", b'{"id": "b", "x": 0.3}', "points", 3, 3, None),
    ]
    out = process_batch(records, serving(0), 1024)
    expected = {"key_size": 10_000, "key_sha256": cut.sha256, "key_truncated": True}
    assignment, plain = (json.loads(o.value) for o in out.assignments)
    assert {k: assignment[k] for k in expected} == expected
    assert not set(expected) & set(plain)
    assert [o.key for o in out.outputs] == [b"q" * 64, b"plain", b"q" * 64]
    letter = json.loads(out.dead_letters[0].value)
    assert {k: letter[k] for k in expected} == expected
    stand_in = json.loads(refused_letter(out.assignments[0], "output_rejected", "no").value)
    assert {k: stand_in[k] for k in expected} == expected


def test_assignments_are_the_wire_formats_own_bytes():
    """Each assignment is byte for byte what wire.assignment.encode writes for its record and
    the classifier's own outputs for it (ids of each kind, integer coordinates, long ids, a null
    timestamp, a cut key, bare numbers in D=1), whatever path encode_slice takes to it."""
    clf = make_classifier(2, 2, max_batch=64)
    params = MixtureParams(PARAMS.weights, np.array([[0.5, 0.0], [11.0, 1.0]]), np.ones(2))
    model = ServingModel(ModelParams(7, params), clf, clf.prepare(params))
    long_key, cut = cut_key(b"k" * 5000, 64)
    records = [
        rec(b'{"id": "a", "x": [0.25, 1e-300]}', 1),
        rec(b'{"id": 12, "x": [3, -4]}', 2),  # integer coordinates are echoed as sent
        rec(b'{"x": [10.5, 1.5]}', 3, key=None),  # no id: topic:partition:offset
        rec(json.dumps({"id": "i" * 3000, "x": [1.0, 2.0]}).encode(), 4),
        InRecord(b"k", b'{"id": "t", "x": [1.0, 2.0]}', "points", 0, 5, None),
        InRecord(long_key, b'{"id": "c", "x": [1.0, 2.0]}', "points", 0, 6, 1.5, cut),
    ]
    scalars = [rec(b'{"id": "s", "x": 0.2}', 7), rec(b'{"x": 11}', 8)]  # D=1: bare numbers
    for slice_records, served in ((records, model), (scalars, serving(0))):
        parsed = parse_slice(slice_records, served.model.mixture.dim, 65536)
        result, _ = classify_slice(parsed, served)
        out = encode_slice(parsed, result, 7, model_name="m")
        assert len(out.assignments) == len(slice_records)
        ids = [json.loads(r.value).get("id") for r in slice_records]
        for i, (o, r) in enumerate(zip(out.assignments, slice_records, strict=True)):
            x = json.loads(r.value)["x"]
            expected = assignment.encode(
                f"points:{r.partition}:{r.offset}" if ids[i] is None else ids[i],
                [x] if not isinstance(x, list) else x,
                not isinstance(x, list),
                result.assignment.tolist()[i],
                result.probs.tolist()[i],
                result.log_likelihood.tolist()[i],
                "m",
                7,
                r.timestamp,
                json.loads(o.value)["ts_out"],  # the clock's, when it encoded
                r.source(),
                r.key_cut,
            )
            assert o.value == expected
            assert type(o.value) is bytes


@pytest.mark.parametrize("temperature", [0, 1])
def test_a_slice_of_usual_records_parses_as_one_with_a_glitch_does(temperature, monkeypatch):
    """The whole-slice path (every record a usual point) and the record-by-record one (a slice
    with a glitch) give the same points, coordinates and per-record keys."""
    good = [rec(json.dumps({"id": f"p{i}", "x": [i / 3, 1]}).encode(), i) for i in range(6)]
    with monkeypatch.context() as m:  # the usual slice never takes the record-by-record path
        m.setattr(batch_module, "decode_point", None)
        fast = parse_slice(good, 2, 65536, temperature, seed=5)
    slow = parse_slice([*good, rec(b"garbage", 99)], 2, 65536, temperature, seed=5)
    assert [p for _, p in fast.valid] == [p for _, p in slow.valid]
    assert [r for r, _ in fast.valid] == good and fast.dead == [] and len(slow.dead) == 1
    assert fast.points.dtype == np.float64
    assert_allclose(fast.points, slow.points, rtol=0)
    if temperature:
        assert (fast.keys == slow.keys).all()
    else:
        assert fast.keys is None and slow.keys is None


def test_dead_letters_of_scored_points_follow_the_points_order():
    """A point the model cannot score and an output too large, interleaved: their dead letters
    come after the slice's invalid records, in the order of their points."""
    tiny = MixtureParams(np.array([0.5, 0.5]), np.array([[0.0], [1.0]]), np.array([1e-12]))
    clf = make_classifier(2, 1, max_batch=64)
    model = ServingModel(ModelParams(1, tiny), clf, clf.prepare(tiny))
    records = [
        rec(json.dumps({"id": "i" * 400, "x": 0.0}).encode(), 1),  # too large an output
        rec(b'{"x": 1e14}', 2),  # not classifiable
        rec(b"garbage", 3),
        rec(json.dumps({"id": "j" * 400, "x": 1.0}).encode(), 4),  # too large
        rec(b'{"x": 0.5}', 5),
    ]
    out = process_batch(records, model, 65536, max_output_bytes=300)
    assert reasons(out) == ["not_json", "output_too_large", "not_classifiable", "output_too_large"]
    assert [json.loads(o.value)["source"]["offset"] for o in out.dead_letters] == [3, 1, 2, 4]
    assert [o.source["offset"] for o in out.assignments] == [5]
    assert len(out.components) == len(out.log_likelihoods) == 1
