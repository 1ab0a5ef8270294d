"""The garbage collector's policy while the worker streams (used by the worker, and by the
benchmarks that time its per-record steps, so that they measure what the worker runs)."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

#: Tracked objects allocated (net) between two young garbage collections while streaming
#: (Python's default is 700). The records' objects die by reference counting, not by the
#: collector, but at the default a young collection ran every few records' worth of allocations
#: and walked the batches in flight: 1-2 us of the worker's ~16 us of CPU per record
#: (gc.callbacks, draining a backlog). Cycles (rare here: exceptions, closed tasks) wait at
#: most this many allocations, a few MB.
STREAM_GC_THRESHOLD = 100_000


@contextlib.contextmanager
def streaming_gc() -> Iterator[None]:
    """Freezes what exists now and collects young objects every STREAM_GC_THRESHOLD
    allocations, until the block ends (the thresholds are restored; frozen objects stay so).

    What exists when streaming starts (JAX, NumPyro, Faust, the compiled classifier) lives as
    long as the process: frozen, a full collection no longer walks it, a 100-200 ms pause that
    otherwise hit the stream every few seconds."""
    gc.freeze()
    thresholds = gc.get_threshold()
    gc.set_threshold(STREAM_GC_THRESHOLD, *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
