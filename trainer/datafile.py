"""Reading points for offline fits: CSV with a header, or JSON lines with an "x" field."""

from __future__ import annotations

import csv
import json
import pathlib

import numpy as np

from mixture.fit import DataError
from mixture.points import PointError, parse_point


def load_points(path: str | pathlib.Path, columns: list[str] | None = None) -> np.ndarray:
    """Returns the file's points as an (N, D) float array; DataError says what is wrong."""
    p = pathlib.Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")  # a byte-order mark is not part of a name
    except OSError as exc:
        raise DataError(f"cannot read {p}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{p} is not UTF-8 text (byte {exc.start})") from None
    first = text.lstrip()[:1]
    if first in ("{", "["):
        return _load_jsonl(p, text)
    return _load_csv(p, text, columns)


def _load_jsonl(p: pathlib.Path, text: str) -> np.ndarray:
    rows, dim = [], None
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            point = parse_point(json.loads(line), dim)
        except RecursionError:
            raise DataError(f"{p}:{lineno}: nested too deeply") from None
        except (ValueError, PointError) as exc:
            raise DataError(f"{p}:{lineno}: {exc}") from None
        dim = len(point.x)
        rows.append(point.x)
    if not rows:
        raise DataError(f"{p} holds no points")
    return np.array(rows, dtype=np.float64)  # None (missing) becomes NaN


def _load_csv(p: pathlib.Path, text: str, columns: list[str] | None) -> np.ndarray:
    reader = csv.DictReader(text.splitlines())
    header = reader.fieldnames or []
    if not header:
        raise DataError(f"{p} is empty or has no header row")
    chosen = columns or header
    missing = [c for c in chosen if c not in header]
    if missing:
        raise DataError(f"{p} has no column(s) {', '.join(missing)}; it has {', '.join(header)}")
    if len(set(header)) != len(header):
        twice = sorted({c for c in header if header.count(c) > 1})
        raise DataError(f"{p} names column(s) {', '.join(twice)} more than once")
    rows = []
    for lineno, row in enumerate(reader, 2):
        if None in row:  # DictReader files fields beyond the header under None
            raise DataError(f"{p}:{lineno}: more fields than the header names")
        try:
            values = [float(row[c]) for c in chosen]
        except (TypeError, ValueError):
            raise DataError(
                f"{p}:{lineno}: non-numeric value in column(s) {', '.join(chosen)}"
            ) from None
        try:  # the same rules as every other point (finite, within range)
            rows.append(parse_point({"x": values}, len(chosen)).x)
        except PointError as exc:
            raise DataError(f"{p}:{lineno}: {exc}") from None
    if not rows:
        raise DataError(f"{p} holds no data rows")
    return np.asarray(rows, dtype=np.float64)
