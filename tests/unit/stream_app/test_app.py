"""The Faust app's table manager: no start-up pause without tables, Faust's own start with one."""

from __future__ import annotations

import asyncio

import faust
import pytest

from stream_app.app import TablelessManager

pytestmark = pytest.mark.unit


def _started(with_table: bool) -> tuple[list[float], list[str]]:
    """Runs the manager's on_start with its pause and recovery stubbed: (pauses, steps)."""
    app = faust.App("t", autodiscover=False, TableManager=TablelessManager)
    if with_table:
        app.Table("counts", default=int)
    manager = app.tables
    assert isinstance(manager, TablelessManager)
    pauses: list[float] = []
    steps: list[str] = []

    async def sleep(seconds: float, *args, **kwargs) -> None:
        pauses.append(seconds)

    async def update_channels() -> None:
        steps.append("channels")

    async def start_recovery() -> None:
        steps.append("recovery")

    manager.sleep = sleep  # type: ignore[method-assign]
    manager._update_channels = update_channels  # type: ignore[method-assign]
    manager.recovery.start = start_recovery  # type: ignore[method-assign]
    asyncio.run(manager.on_start())
    return pauses, steps


def test_without_tables_the_manager_starts_recovery_at_once():
    assert _started(with_table=False) == ([], ["channels", "recovery"])


def test_with_a_table_faust_waits_for_more_to_register_as_it_always_did():
    assert _started(with_table=True) == ([1.0], ["channels", "recovery"])
