"""The zstd level of the batches aiokafka builds: set process-wide, read back by any reader."""

from __future__ import annotations

import cramjam
import pytest
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record import default_records as py_records

from kafka_common import record_batches, zstd_level

ZSTD = 4  # the record batch attribute of a zstd batch


@pytest.fixture(autouse=True)
def default_level():
    yield
    zstd_level.install(1)  # what every producer of the suite installs (the setting's default)


def zstd_batch(values: list[bytes]) -> bytes:
    batch = BatchBuilder(1 << 20, ZSTD)
    for i, value in enumerate(values):
        batch.append(key=b"k%d" % i, value=value, timestamp=None)
    return bytes(batch._build())


VALUES = [
    b'{"id":"r-%d","x":%r,"assignment":1,"probs":[0.25,0.75],"model":"gmm"}' % (i, i / 7)
    for i in range(500)
]


@pytest.mark.parametrize("level", [1, 3, 19])
def test_batches_are_compressed_at_the_level_and_read_back(level):
    zstd_level.install(level)
    assert zstd_level.installed_level() == level
    data = zstd_batch(VALUES)
    records = record_batches.TolerantRecords(data)
    batch = records.next_batch()
    assert [r.value for r in batch] == VALUES
    # The records section is zstd's output at that level (the header is 61 bytes).
    raw = py_records.DefaultRecordBatch(data)
    assert raw.compression_type == ZSTD
    section = bytes(cramjam.zstd.decompress(data[61:]))
    assert len(data) - 61 == len(bytes(cramjam.zstd.compress(section, level=level)))


def test_higher_levels_write_fewer_bytes_and_bad_levels_are_refused():
    zstd_level.install(1)
    fast = len(zstd_batch(VALUES))
    zstd_level.install(19)
    assert len(zstd_batch(VALUES)) < fast
    for bad in (0, 20, -1):
        with pytest.raises(ValueError, match=r"in 1\.\.19"):
            zstd_level.install(bad)
