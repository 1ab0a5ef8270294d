"""The README stays true: its configuration table is the one generated from the settings."""

from __future__ import annotations

from kafka_common.settings import markdown_table
from stream_app.settings import WorkerSettings
from tests.conftest import ROOT


def test_readme_configuration_table_is_current():
    readme = (ROOT / "README.md").read_text()
    assert markdown_table(WorkerSettings) in readme, (
        "regenerate the table: python -m stream_app.settings --markdown"
    )
