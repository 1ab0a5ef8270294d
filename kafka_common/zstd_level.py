"""The zstd level of the record batches this process writes with aiokafka (GMM_OUTPUT_ZSTD_LEVEL).

aiokafka 0.14 (pinned) compresses every zstd record batch at zstd's default level, 3, and has no
option for another. On the worker's outputs (JSON assignments of ~270 bytes) level 1 takes 0.34 us
a record against 0.50 at level 3 and writes fewer bytes (0.17x the JSON against 0.19x), and
compression runs on the worker's event loop, which bounds its throughput
(docs/benchmarks.md). `install(level)` makes aiokafka's batch builders, compiled and pure
Python, compress zstd batches at `level`, process-wide, as `record_batches.install` sets their
decoders. Readers need nothing: any level decodes the same way.
"""

from __future__ import annotations

import functools

from aiokafka import codec
from aiokafka.record import default_records as py_records

try:  # the compiled builders aiokafka uses unless AIOKAFKA_NO_EXTENSIONS is set
    from aiokafka.record._crecords import default_records as c_records
except ImportError:  # pragma: no cover
    c_records = None

#: zstd's levels without its "ultra" ones (20-22 need far more memory to decode).
LEVELS = range(1, 20)


def install(level: int) -> None:
    """Every zstd record batch this process builds is compressed at `level`. Idempotent."""
    if level not in LEVELS:
        raise ValueError(f"zstd level must be in 1..19, got {level}")
    encode = functools.partial(codec.zstd_encode, level=level)
    for module in (py_records, c_records):
        if module is not None:
            module.zstd_encode = encode


def installed_level() -> int | None:
    """The level aiokafka's compiled builders use now (None: aiokafka's default, 3)."""
    module = c_records if c_records is not None else py_records
    encode = module.zstd_encode
    return encode.keywords["level"] if isinstance(encode, functools.partial) else None
