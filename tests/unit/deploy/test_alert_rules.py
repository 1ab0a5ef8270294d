"""The alert and recording rules (deploy/prometheus/rules/): checked and unit-tested by promtool,
and held to the conventions every alert follows here.

`promtool test rules` runs deploy/prometheus/tests/gmm-alerts.test.yml, which gives every alert a
case where it fires (exact labels and annotations) and one where it does not; the tests below
check that it does, that every alert has a severity, a summary, a description and a runbook
that exists in docs/runbooks.md, and that Prometheus' configuration loads the rule files.
Without promtool (the Debian package `prometheus`) the promtool tests skip, except where GMM_CI
is set (CI), where they fail. Nothing here needs a broker.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import subprocess

import pytest
import yaml

from tests.conftest import ROOT

PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
ALERTS_FILE = PROMETHEUS_DIR / "rules" / "gmm-alerts.yml"
RECORDING_FILE = PROMETHEUS_DIR / "rules" / "gmm-recording.yml"
RULE_FILES = (ALERTS_FILE, RECORDING_FILE)
TEST_FILE = PROMETHEUS_DIR / "tests" / "gmm-alerts.test.yml"
RUNBOOKS = ROOT / "docs" / "runbooks.md"
SEVERITIES = {"critical", "warning"}


def _rules(path):
    return [rule for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]]


ALERTS = {rule["alert"]: rule for rule in _rules(ALERTS_FILE) if "alert" in rule}
RECORDS = [rule["record"] for rule in _rules(RECORDING_FILE) if "record" in rule]
UNIT_TESTS = yaml.safe_load(TEST_FILE.read_text())


@pytest.fixture(scope="module")
def promtool():
    program = os.environ.get("PROMTOOL") or shutil.which("promtool")
    if program is None:
        message = "no promtool here (apt-get install prometheus; or PROMTOOL=its path)"
        if os.environ.get("GMM_CI"):
            pytest.fail(f"GMM_CI is set: {message}")
        pytest.skip(message)
    return program


def _run(promtool, *args):
    result = subprocess.run(
        [promtool, *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


# --- promtool ------------------------------------------------------------------------------------


def test_promtool_accepts_the_rule_files(promtool):
    out = _run(promtool, "check", "rules", *(str(p) for p in RULE_FILES))
    assert f"SUCCESS: {len(ALERTS)} rules found" in out
    assert f"SUCCESS: {len(RECORDS)} rules found" in out


def test_promtool_unit_tests_pass(promtool):
    out = _run(promtool, "test", "rules", str(TEST_FILE))
    assert "SUCCESS" in out


def test_the_unit_tests_load_both_rule_files():
    loaded = {(TEST_FILE.parent / path).resolve() for path in UNIT_TESTS["rule_files"]}
    assert loaded == {path.resolve() for path in RULE_FILES}


# --- every alert's labels and annotations --------------------------------------------------------


def test_there_are_alerts_and_recording_rules():
    assert len(ALERTS) >= 17 and len(RECORDS) >= 5
    names = [rule["alert"] for rule in _rules(ALERTS_FILE)]
    assert len(names) == len(set(names)), "an alert name is used twice"


@pytest.mark.parametrize("name", sorted(ALERTS))
def test_alert_has_a_severity_and_annotations(name):
    rule = ALERTS[name]
    assert rule["labels"]["severity"] in SEVERITIES
    annotations = rule["annotations"]
    for key in ("summary", "description", "runbook_url"):
        assert str(annotations.get(key, "")).strip(), f"{name} has no {key}"
    assert annotations["runbook_url"] == f"docs/runbooks.md#{name.lower()}"


def github_anchor(heading):
    """The anchor GitHub gives a Markdown heading: its text, lower-cased, without punctuation
    (hyphens and underscores stay), each space a hyphen."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # [text](link) -> text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def runbook_anchors(markdown):
    """The anchors of the `##` and `###` headings outside code blocks (a repeated heading gets
    -1, -2, ... as on GitHub)."""
    anchors, seen, fenced = set(), collections.Counter(), False
    for line in markdown.splitlines():
        if re.match(r"\s*(```|~~~)", line):
            fenced = not fenced
            continue
        match = None if fenced else re.match(r"#{2,3}\s+(.+?)\s*#*\s*$", line)
        if match:
            anchor = github_anchor(match.group(1))
            anchors.add(f"{anchor}-{seen[anchor]}" if seen[anchor] else anchor)
            seen[anchor] += 1
    return anchors


def test_github_anchors():
    assert github_anchor("GmmWorkerDown") == "gmmworkerdown"
    assert github_anchor("`GmmWorkerDown`: no worker") == "gmmworkerdown-no-worker"
    assert github_anchor("Input lag (per partition)") == "input-lag-per-partition"
    assert runbook_anchors("## A\n```\n## B\n```\n### A\n# C\n#### D\n") == {"a", "a-1"}


def test_every_runbook_url_has_a_runbook():
    assert RUNBOOKS.exists(), f"{RUNBOOKS.relative_to(ROOT)} is missing"
    anchors = runbook_anchors(RUNBOOKS.read_text())
    missing = [
        name
        for name, rule in sorted(ALERTS.items())
        if rule["annotations"]["runbook_url"].partition("#")[2] not in anchors
    ]
    assert not missing, f"no `## <alert>` heading in docs/runbooks.md for {missing}"


# --- the promtool unit tests cover every alert ---------------------------------------------------


def _alert_cases():
    for test in UNIT_TESTS["tests"]:
        yield from test.get("alert_rule_test") or []


def test_every_alert_has_a_firing_and_a_quiet_case():
    firing, quiet = collections.Counter(), collections.Counter()
    for case in _alert_cases():
        (firing if case.get("exp_alerts") else quiet)[case["alertname"]] += 1
    assert set(firing) | set(quiet) <= set(ALERTS), "a case names an alert that does not exist"
    assert not [name for name in ALERTS if not firing[name]], "alerts never shown firing"
    assert not [name for name in ALERTS if not quiet[name]], "alerts never shown not firing"


def test_firing_cases_give_the_rules_labels_and_every_annotation():
    for case in _alert_cases():
        rule = ALERTS[case["alertname"]]
        for alert in case.get("exp_alerts") or []:
            labels = alert["exp_labels"]
            assert labels.get("alertname", case["alertname"]) == case["alertname"]
            assert labels["severity"] == rule["labels"]["severity"], case
            assert set(alert["exp_annotations"]) == set(rule["annotations"]), case


def test_every_recording_rule_is_evaluated_by_a_test():
    exprs = " ".join(
        case["expr"] for test in UNIT_TESTS["tests"] for case in test.get("promql_expr_test") or []
    )
    assert not [record for record in RECORDS if record not in exprs]


def _reasons(expr, operator):
    (alternatives,) = re.findall(rf'reason{operator}"([^"]*)"', expr)
    return set(alternatives.split("|"))


def test_the_untrusted_reasons_are_the_trust_checks():
    """GmmParamsUntrusted (critical) takes the reasons of a failed trust check, GmmParamsRejected
    (warning) every other one: the same list, once matched and once excluded."""
    trust = {"bad_signature", "replayed", "name_mismatch", "stage_mismatch"}
    assert _reasons(ALERTS["GmmParamsUntrusted"]["expr"], "=~") == trust
    assert _reasons(ALERTS["GmmParamsRejected"]["expr"], "!~") == trust
    assert ALERTS["GmmParamsUntrusted"]["labels"]["severity"] == "critical"
    assert ALERTS["GmmParamsRejected"]["labels"]["severity"] == "warning"


# --- Prometheus loads the rule files -------------------------------------------------------------


def test_prometheus_configuration_loads_the_rule_files():
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    patterns = config.get("rule_files") or []
    loaded = {path.resolve() for pattern in patterns for path in PROMETHEUS_DIR.glob(pattern)}
    assert {path.resolve() for path in RULE_FILES} <= loaded, patterns
