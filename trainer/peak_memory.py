"""Peak resident memory of this process over a stretch of work (a fit), for metrics and reports.

Linux keeps a process's high-water mark of resident memory (VmHWM in /proc/self/status) and
resets it to the current resident size when "5" is written to /proc/self/clear_refs, so the
peak of one fit is measured exactly: reset, fit, read. The reset is process-wide: after it,
VmHWM and getrusage's ru_maxrss no longer hold the process's lifetime peak (the trainer reports
each fit's instead, which is what sizing its memory limit needs). Where the reset is refused
(another OS, a read-only /proc), or while another measurement is under way (a reset would spoil
it), the figure is the peak since the last reset or since start, which is at least the work's;
`PeakRss.exact` says which. Memory held by the process's other threads during the work (a
posterior run) counts too.
"""

from __future__ import annotations

import resource
import sys
import threading
from pathlib import Path
from types import TracebackType

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
#: Held by the measurement that reset the high-water mark, until it has read it.
_resetting = threading.Lock()


def _vm_hwm_bytes() -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # reported in kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def _since_start_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, kB elsewhere


class PeakRss:
    """`with PeakRss() as peak: work()`, then `peak.bytes`: the most resident memory the
    process held during the block (its threads' work included); `peak.exact` is False when
    the figure may include memory held before the block (see the module)."""

    def __init__(self) -> None:
        self.bytes = 0
        self.exact = False
        self._owns_reset = False

    def __enter__(self) -> PeakRss:
        self._owns_reset = _resetting.acquire(blocking=False)
        if self._owns_reset:
            try:
                _CLEAR_REFS.write_text("5")
                self.exact = _vm_hwm_bytes() is not None
            except OSError:
                self.exact = False
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            hwm = _vm_hwm_bytes()
            self.bytes = hwm if hwm is not None else _since_start_bytes()
        finally:
            if self._owns_reset:
                _resetting.release()
                self._owns_reset = False
