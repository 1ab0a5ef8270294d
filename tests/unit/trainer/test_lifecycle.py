"""The lifecycle's pure parts: version rows, report pruning, the first-model retry, names."""

from __future__ import annotations

import pytest

from kafka_common.settings import SettingsError, check_model_name
from mixture.params import FitMetadata, MixtureParams, ModelParams, ParamsError
from trainer.cycle import CycleOutcome
from trainer.lifecycle import format_rows, version_rows
from trainer.main import next_cycle_in
from trainer.report import prune_reports
from trainer.settings import TrainerSettings
from wire.params_record import decode, stamped, withdrawn_marker, withdrawn_version


def model(version: int, **extra) -> ModelParams:
    return ModelParams(
        version,
        MixtureParams([0.5, 0.5], [[0.0], [5.0]], [1.0]),
        FitMetadata(fitted_at="2026-11-28T00:00:00+00:00", n_points=10, extra=extra),
    )


def test_version_rows_mark_the_served_version_and_the_publisher():
    history = [
        model(1, published_by="trainer", mean_log_likelihood=-2.5),
        model(2, published_by="cli"),
        model(3, published_by="rollback", rolled_back_from=1),
    ]
    rows = version_rows(history, serving=history[-1])
    assert [(r.version, r.stage, r.published_by) for r in rows] == [
        (1, "retired", "trainer"),
        (2, "retired", "cli"),
        (3, "serving", "rollback"),
    ]
    assert rows[0].mean_log_likelihood == -2.5 and rows[1].mean_log_likelihood is None
    table = format_rows(rows).splitlines()
    assert table[0].split() == [
        "version",
        "stage",
        "fitted_at",
        "points",
        "mean_loglik",
        "published_by",
    ]
    assert table[3].endswith("rollback (from v1)")


def test_a_served_version_missing_from_the_history_is_listed():
    rows = version_rows([], serving=model(4, published_by="trainer"))
    assert [(r.version, r.stage) for r in rows] == [(4, "serving")]


def test_prune_keeps_the_newest_reports(tmp_path):
    for v in (1, 2, 3, 10, 11):
        (tmp_path / f"v{v}").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "v7.txt").write_text("not a report")
    deleted = prune_reports(tmp_path, keep=3)
    assert sorted(p.name for p in deleted) == ["v1", "v2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes", "v10", "v11", "v3", "v7.txt"]


def test_no_model_yet_retries_quickly():
    settings = TrainerSettings.from_env(
        {"GMM_TRAIN_INTERVAL_SECONDS": "300", "GMM_FIRST_MODEL_RETRY_SECONDS": "2"}
    )

    class T:
        current = None

    rejected = CycleOutcome(None, "too_few_points", "", 0, {}, None, None)
    assert next_cycle_in(settings, T(), rejected) == 2
    T.current = model(1)
    assert next_cycle_in(settings, T(), rejected) == 300


@pytest.mark.parametrize("name", ["gmm", "a", "fraud-v2", "x.y_z", "A" * 64])
def test_model_names_accepted(name):
    check_model_name(name)


@pytest.mark.parametrize("name", ["", "../etc", ".hidden", "a/b", "a b", "A" * 65, "é"])
def test_model_names_refused(name):
    with pytest.raises(SettingsError, match="GMM_MODEL_NAME"):
        check_model_name(name)


def test_readers_filter_on_the_key_and_the_claimed_name():
    value = stamped(model(1), "a", "trainer").dumps().encode()
    assert decode(b"a", value, "a").model.version == 1
    with pytest.raises(ParamsError) as refused:
        decode(b"b", value, "b")  # says it is a, keyed b
    assert refused.value.reason == "name_mismatch"
    assert decode(b"a", value, "b") is None  # another name's record: skipped
    assert decode(b"a", None, "a") is None  # a tombstone


def test_stamped_names_the_publisher():
    m = stamped(model(1), "a", "rollback", rolled_back_from=1)
    assert m.metadata.extra["model_name"] == "a"
    assert m.metadata.extra["published_by"] == "rollback"
    with pytest.raises(ValueError, match="published_by"):
        stamped(model(1), "a", "someone")


def test_candidates_are_listed_as_candidate_or_shadowed():
    history = [
        model(1, published_by="trainer", stage="served"),
        model(2, published_by="trainer", stage="candidate"),
        model(3, published_by="trainer", stage="served", promoted_from=2),
        model(4, published_by="trainer", stage="candidate"),
    ]
    rows = version_rows(history, serving=history[2], candidate=history[3])
    assert [r.stage for r in rows] == ["retired", "shadowed", "serving", "candidate"]


def test_withdrawal_markers_carry_the_highest_version():
    assert withdrawn_version(withdrawn_marker("gmm", 7)) == 7
    assert withdrawn_version(None) is None
    assert withdrawn_version(model(3).dumps().encode()) is None
    assert withdrawn_version(b'{"schema": "gmm-candidate-withdrawn/1", "version": -1}') is None
    assert withdrawn_version(b'{"schema": "gmm-candidate-withdrawn/1", "version": "7"}') is None
    assert withdrawn_version(b"gmm-candidate-withdrawn/1 not json") is None


@pytest.mark.parametrize("fitted_at", [None, 42, "yesterday", "2026-11-28T00:00:00"])
def test_a_candidate_of_unknown_age_times_out_instead_of_crashing(fitted_at):
    from trainer.cycle import _age_seconds

    m = ModelParams(1, model(1).mixture, FitMetadata(fitted_at=fitted_at))
    age = _age_seconds(m)
    assert age == float("inf") or age > 0  # a naive time is read as UTC


def test_each_drift_alarm_is_answered_by_one_cycle():
    from trainer.main import DriftRequests

    class T:
        version = 4

    drift = DriftRequests()
    assert not drift.pending_for(T())
    drift.raise_for(3)  # about an older version: answered already by the refit to 4
    assert not drift.pending_for(T())
    drift.raise_for(4)
    assert drift.pending_for(T())
    drift.answer()  # a cycle ran (published or rejected): no loop of refits
    assert not drift.pending_for(T())
    drift.raise_for(5)  # a version published by someone else since the trainer looked
    assert drift.pending_for(T())


@pytest.mark.parametrize(
    "data",
    [
        {"records": "100"},
        {"agreements": 1.5},
        {"records": 10, "agreements": 11},
        {"records": -1, "agreements": 0},
        {"served_version": "4"},
        {"candidate_log_likelihood": "inf"},
        {"worker": 7},
        {"clipped_difference_sum": 1e17},  # more than CLIP_NATS per record
    ],
)
def test_forged_shadow_reports_are_ignored(data):
    from trainer.events import ShadowTally
    from wire.event import Event
    from wire.shadow_report import ShadowReport, ShadowTotals

    good = ShadowReport(5, 4, "w", ShadowTotals(100, -100.0, -200.0, 90, 100.0)).to_json()
    tally = ShadowTally()
    assert tally.update(Event.now("shadow", "gmm", 5, 0.0, data=good))
    assert not tally.update(Event.now("shadow", "gmm", 5, 0.0, data={**good, **data}))
    assert tally.totals(5, 4).records == 100
