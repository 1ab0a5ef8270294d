"""Peak resident memory of this process over a stretch of work (a fit), for metrics and reports.

Linux keeps a process's high-water mark of resident memory (VmHWM in /proc/self/status) and
resets it to the current resident size when "5" is written to /proc/self/clear_refs, so the
peak of one fit is measured exactly: reset, fit, read. Where that reset is refused (another OS,
a locked-down /proc), the figure is the process's lifetime peak (`getrusage`), which is at least
the fit's; `PeakRss.exact` says which.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path
from types import TracebackType

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _vm_hwm_bytes() -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # reported in kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def _lifetime_peak_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, kB elsewhere


class PeakRss:
    """`with PeakRss() as peak: work()`, then `peak.bytes`: the most resident memory the
    process held during the block (its threads' work included)."""

    def __init__(self) -> None:
        self.bytes = 0
        self.exact = False

    def __enter__(self) -> PeakRss:
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
        hwm = _vm_hwm_bytes() if self.exact else None
        self.bytes = hwm if hwm is not None else _lifetime_peak_bytes()
