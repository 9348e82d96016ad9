"""Reading call results from files: JSON Lines or CSV, plain or gzip-compressed.

Records are yielded as the sender wrote them (decoded JSON, or a CSV row in the JSON form of an
event); validation is the pipeline's job, so a bad record reaches the dead letters with its reason.
"""

from __future__ import annotations

import csv
import gzip
import io
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import orjson

from worker.events import event_from_csv_row

__all__ = ["SourceError", "iter_records"]


class SourceError(ValueError):
    """A file that cannot be read at all (missing, not gzip, not text)."""


def _open_text(path: Path) -> IO[str]:
    try:
        if path.suffix == ".gz":
            return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
        # utf-8-sig: spreadsheet "CSV UTF-8" exports start with a byte order mark.
        return path.open("r", encoding="utf-8-sig", newline="")
    except OSError as error:
        raise SourceError(f"{path}: cannot open: {error.strerror or error}") from None


def is_csv(path: Path) -> bool:
    return ".csv" in path.suffixes


def iter_records(path: Path) -> Iterator[tuple[int, object]]:
    """Yield (line number, record) for every record of ``path``.

    A JSON Lines record that is not valid JSON is yielded as its text, so that it is rejected
    downstream with a reason instead of stopping the read.
    """
    handle = _open_text(path)
    try:
        with handle:
            if is_csv(path):
                reader = csv.DictReader(handle)
                for row in reader:
                    yield reader.line_num, event_from_csv_row(row)
                return
            for number, line in enumerate(handle, start=1):
                text = line.strip()
                if not text:
                    continue
                try:
                    yield number, orjson.loads(text)
                except orjson.JSONDecodeError:
                    yield number, text
    # zlib.error (bytes damaged inside a .gz) is no OSError; EOFError is a truncated .gz.
    except (OSError, EOFError, UnicodeDecodeError, csv.Error, zlib.error) as error:
        raise SourceError(f"{path}: cannot read: {error}") from None
