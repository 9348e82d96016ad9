"""Reading call results from files: JSON Lines or CSV, plain or gzip-compressed.

Records are yielded as the sender wrote them (decoded JSON, or a CSV row in the JSON form of an
event); validation is the pipeline's job, so a bad record reaches the dead letters with its reason.
A CSV row the reader cannot delimit (a quote left open) is yielded as an ``UnreadableRow``.
"""

from __future__ import annotations

import csv
import gzip
import io
import zlib
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import orjson

from worker.domain.events import EVENT_FIELDS, REQUIRED_FIELDS, event_from_csv_row

__all__ = [
    "DecodedText",
    "SourceError",
    "UnreadableRow",
    "check_files",
    "iter_records",
    "json_record",
]

_KNOWN_COLUMNS = frozenset(EVENT_FIELDS)
# A quoted cell may hold line breaks (an agent's note in an extra column), but no real note runs
# to this many lines: a row that does is a quote left open, and reading it further would swallow
# the rows after it. Each broken row costs re-reading at most this many lines.
MAX_RECORD_LINES = 100
_RUNS_PAST = (
    f"unterminated quote (the row starting on this line runs past {MAX_RECORD_LINES} lines)"
)
# Separators a spreadsheet may use instead of the comma: a header of one column holding one of
# them was written with it.
_OTHER_SEPARATORS = (";", "\t", "|")
# How much of a refused header the error line shows (a data line can be long).
_SHOWN_HEADER = 100


class SourceError(ValueError):
    """A file that cannot be read at all (missing, not gzip, not text, an unrecognised header)."""


@dataclass(frozen=True)
class UnreadableRow:
    """A CSV row that cannot be delimited: its first line as written, and why it is broken."""

    text: str
    detail: str


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


class DecodedText(str):
    """A JSON string decoded already (a record whose JSON is a string, or a line that is not
    JSON at all), where a plain ``str`` would be a JSON line's text still to decode."""

    __slots__ = ()


def json_record(text: str) -> object:
    """A JSON Lines record: its JSON decoded, or its text when it is not valid JSON."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def iter_records(
    path: Path, *, undecoded: bool = False
) -> Generator[tuple[int, object], None, None]:
    """Yield (line number, record) for every record of ``path``.

    A JSON Lines record that is not valid JSON is yielded as its text, so that it is rejected
    downstream with a reason instead of stopping the read; a CSV row that cannot be delimited is
    yielded as an ``UnreadableRow`` at the line where it starts, and reading goes on with the
    next line. A file that cannot be read, or a CSV header without the contract's required
    columns, raises ``SourceError``.

    ``undecoded``: JSON Lines records are yielded as their text (a ``str``, never what a CSV
    row is), for ``json_record`` to decode later, elsewhere (replay's reader hands the lines to
    the processes that use them).
    """
    handle = _open_text(path)
    try:
        with handle:
            if is_csv(path):
                yield from _csv_records(path, handle)
                return
            if undecoded:
                for number, line in enumerate(handle, start=1):
                    text = line.strip()
                    if text:
                        yield number, text
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


def check_files(paths: Iterable[Path]) -> None:
    """Open every file and read its first record (a CSV's header first), or raise SourceError.

    Called before any work, so that a missing file or a CSV with an unrecognised header is
    refused before anything is decided, written or published.
    """
    for path in paths:
        records = iter_records(path)
        try:
            next(records, None)
        finally:
            records.close()


class _TooLong(Exception):
    """The row being read runs past MAX_RECORD_LINES lines."""


class _Lines:
    """A text file's physical lines, as csv.reader takes them, counted, with the lines of the row
    being read kept so that all but its first can be read again when the row is broken."""

    def __init__(self, handle: IO[str]) -> None:
        self._handle = handle
        self._again: list[str] = []  # lines to read again, the next one last
        self.number = 0  # the line last read
        self.taken: list[str] = []  # the lines of the row being read
        self.ended = False  # the file ended while the row was being read

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        if len(self.taken) >= MAX_RECORD_LINES:
            raise _TooLong
        if self._again:
            line = self._again.pop()
        else:
            line = self._handle.readline()
            if not line:
                self.ended = True
                raise StopIteration
        self.number += 1
        self.taken.append(line)
        return line

    def start_row(self) -> int:
        """Begin a row; returns the number of its first line."""
        self.taken.clear()
        self.ended = False
        return self.number + 1

    def read_again(self) -> None:
        """Go back to the line after the first of the row just read."""
        self._again.extend(reversed(self.taken[1:]))
        self.number -= len(self.taken) - 1


def _csv_records(path: Path, handle: IO[str]) -> Iterator[tuple[int, object]]:
    """The rows of a CSV file after its header, each as the JSON form of an event.

    A quoted cell may hold line breaks, but a row counts as broken (a quote left open) when it
    runs to the end of the file, or past MAX_RECORD_LINES lines, or when it spans several lines
    and either has a line break in a column of the contract (ids, codes and times never hold one)
    or has a different number of cells from the header. A broken row is an ``UnreadableRow`` at
    its first line, and reading goes on with the line after that one.
    """
    lines = _Lines(handle)
    reader = csv.reader(lines)
    columns = _header(path, lines, reader)
    while columns is not None:
        start = lines.start_row()
        detail: str | None
        try:
            cells = next(reader)
        except StopIteration:
            return
        except _TooLong:
            detail = _RUNS_PAST
        except csv.Error as error:  # a cell past csv.field_size_limit(): no quote to blame
            detail = f"unreadable row ({error})"
        else:
            if not cells:  # a blank line
                continue
            detail = _broken(cells, columns, lines)
            if detail is None:
                yield start, event_from_csv_row(dict(zip(columns, cells, strict=False)))
                continue
        first = lines.taken[0].rstrip("\r\n")
        lines.read_again()
        yield start, UnreadableRow(first, detail)


def _broken(cells: list[str], columns: list[str], lines: _Lines) -> str | None:
    """Why a row just read is broken (see _csv_records), or None."""
    if lines.ended:
        return (
            "unterminated quote (the quoted cell opened on this line runs to the end of the file)"
        )
    if len(lines.taken) == 1:
        return None
    where = f"unterminated quote (the row starting on this line runs on to line {lines.number}"
    if len(cells) != len(columns):
        return f"{where}: {len(cells)} cells, the header has {len(columns)})"
    for column, cell in zip(columns, cells, strict=True):
        if column in _KNOWN_COLUMNS and ("\n" in cell or "\r" in cell):
            return f"{where}, with a line break in {column})"
    return None


def _header(path: Path, lines: _Lines, reader: Iterator[list[str]]) -> list[str] | None:
    """The column names of a CSV file (None for a file with no rows at all), or SourceError.

    Harmless differences are accepted: spaces around a name, and the letter case of the
    contract's names. Unknown extra columns are kept (their fields are kept but ignored).
    """
    cells: list[str] = []
    while not cells:
        lines.start_row()
        try:
            row = next(reader, None)
        except (_TooLong, csv.Error):
            row = [lines.taken[0]]
        if row is None:
            return None
        cells = row
    columns = []
    for cell in cells:
        name = cell.strip()
        columns.append(name.lower() if name.lower() in _KNOWN_COLUMNS else name)
    missing = [name for name in REQUIRED_FIELDS if name not in columns]
    twice = [name for name in EVENT_FIELDS if columns.count(name) > 1]
    if not missing and not twice:
        return columns
    separator = next((s for s in _OTHER_SEPARATORS if len(cells) == 1 and s in cells[0]), None)
    if separator is not None:
        why = f"one column: is the separator {separator!r}?"
    elif _KNOWN_COLUMNS.isdisjoint(columns):
        why = "no known column: is the header line missing?"
    elif missing:
        why = f"missing {', '.join(missing)}"
    else:
        why = f"{', '.join(twice)} twice"
    found = lines.taken[0].rstrip("\r\n")
    if len(found) > _SHOWN_HEADER:
        found = found[:_SHOWN_HEADER] + "..."
    optional = [name for name in EVENT_FIELDS if name not in REQUIRED_FIELDS]
    raise SourceError(
        f"{path}: unrecognised CSV header: found {found!r} ({why}); expected columns"
        f" {', '.join(REQUIRED_FIELDS)} (and optional {', '.join(optional)})"
    )
