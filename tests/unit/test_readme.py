"""The README stays true: its configuration table is the one generated from the settings."""

from __future__ import annotations

import pytest

from kafka_common.settings import markdown_table
from stream_app.settings import WorkerSettings
from tests.conftest import ROOT
from trainer.settings import TrainerSettings


@pytest.mark.parametrize(
    ("settings", "module"),
    [(WorkerSettings, "stream_app.settings"), (TrainerSettings, "trainer.settings")],
)
def test_readme_configuration_tables_are_current(settings, module):
    readme = (ROOT / "README.md").read_text()
    assert markdown_table(settings) in readme, (
        f"regenerate the table: python -m {module} --markdown"
    )
