"""Property-based: no payload, however malformed, escapes the point rules with another error."""

from __future__ import annotations

import json
import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from mixture.classify import make_classifier
from mixture.params import MixtureParams, ModelParams
from mixture.points import REASONS, PointError, decode_point
from stream_app.model_state import ServingModel
from stream_app.records import InRecord
from tests.unit.stream_app.fakes import process_batch

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["x", "id", "y"]) | st.text(max_size=5), children, max_size=4
        )
    ),
    max_leaves=12,
)


def check(raw: bytes, dim: int | None) -> None:
    try:
        point = decode_point(raw, dim, max_bytes=4096)
    except PointError as exc:
        assert exc.reason in REASONS
        assert str(exc)
        return
    assert isinstance(point.x, list) and len(point.x) >= 1
    # A coordinate may be missing (None) in D >= 2, never all of them.
    assert all(v is None or math.isfinite(v) for v in point.x)
    assert any(v is not None for v in point.x)
    assert dim is None or len(point.x) == dim


@given(st.binary(max_size=300), st.sampled_from([None, 1, 2]))
def test_arbitrary_bytes(raw, dim):
    check(raw, dim)


@given(json_values, st.sampled_from([None, 1, 2]))
def test_arbitrary_json(value, dim):
    check(json.dumps(value).encode(), dim)


@given(st.dictionaries(st.sampled_from(["x", "id"]), json_values, min_size=1))
def test_arbitrary_objects_with_x_and_id(obj):
    check(json.dumps(obj).encode(), 1)


CLF = make_classifier(2, 1, max_batch=64)
PARAMS = MixtureParams(np.array([0.4, 0.6]), np.array([[0.0], [10.0]]), np.array([1.0]))
SERVING = ServingModel(ModelParams(1, PARAMS), CLF, CLF.prepare(PARAMS))


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=50),
            json_values.map(lambda v: json.dumps(v).encode()),
            st.floats(allow_nan=False, allow_infinity=False).map(
                lambda x: json.dumps({"x": x}).encode()
            ),
        ),
        max_size=40,
    )
)
def test_every_record_of_a_batch_yields_exactly_one_output(payloads):
    records = [InRecord(None, p, "t", 0, i, None) for i, p in enumerate(payloads)]
    out = process_batch(records, SERVING, 4096)
    assert len(out.assignments) + len(out.dead_letters) == len(records)
    for o in out.assignments:  # strict JSON: no NaN or Infinity ever leaves the worker
        json.loads(o.value, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    offsets = sorted(
        [json.loads(o.value)["source"]["offset"] for o in out.assignments]
        + [json.loads(o.value)["source"]["offset"] for o in out.dead_letters]
    )
    assert offsets == list(range(len(records)))


point_like = st.fixed_dictionaries(
    {},
    optional={
        "x": st.floats(allow_nan=False)
        | st.integers()
        | st.lists(st.floats(allow_nan=False) | st.integers() | st.booleans(), max_size=3)
        | st.booleans()
        | st.none(),
        "id": st.text(max_size=4) | st.integers() | st.booleans() | st.floats() | st.none(),
    },
)


@given(obj=point_like | json_values, dim=st.sampled_from([None, 1, 2]))
@settings(max_examples=600, deadline=None)
def test_the_fast_path_accepts_only_what_the_full_rules_accept(obj, dim):
    from mixture.points import _fast_point, _parse_point_fully

    fast = _fast_point(obj, dim)
    if fast is None:
        return
    # The full rules, without the fast path: what parse_point did before it existed.
    try:
        full = _parse_point_fully(obj, dim)
    except PointError as exc:
        raise AssertionError(f"fast path accepted {obj!r}, the rules say {exc.reason}") from None
    assert fast == full
