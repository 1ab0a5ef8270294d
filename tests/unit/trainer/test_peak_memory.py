"""The peak resident memory of a stretch of work (trainer.peak_memory)."""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest

from trainer.peak_memory import PeakRss

pytestmark = pytest.mark.unit

MIB = 2**20


def _hold(megabytes: int) -> None:
    block = np.ones(megabytes * MIB, np.uint8)  # touched: resident, not just reserved
    assert block.sum() == megabytes * MIB


def test_the_peak_counts_memory_freed_before_the_end():
    with PeakRss() as before:
        pass
    with PeakRss() as peak:
        _hold(300)
    assert peak.bytes >= before.bytes + 250 * MIB
    if sys.platform == "linux":
        assert peak.exact


def test_a_later_block_does_not_inherit_an_earlier_peak():
    """Reset at entry (Linux): a small block after a big one reports its own, smaller peak."""
    with PeakRss() as big:
        _hold(400)
    with PeakRss() as small:
        pass
    if not small.exact:
        pytest.skip("this OS keeps only the lifetime peak")
    assert small.bytes <= big.bytes - 300 * MIB


def test_work_on_another_thread_counts():
    """The trainer fits on a worker thread (asyncio.to_thread): its memory is the process's."""
    with PeakRss() as peak:
        t = threading.Thread(target=_hold, args=(300,))
        t.start()
        t.join()
    assert peak.bytes >= 250 * MIB


def test_an_overlapping_measurement_does_not_reset_the_first():
    """A second measurement inside the first neither resets the high-water mark (which would
    hide the first's peak so far) nor claims to be exact."""
    with PeakRss() as outer:
        _hold(300)
        with PeakRss() as inner:
            pass
    assert not inner.exact
    assert outer.bytes >= 250 * MIB
