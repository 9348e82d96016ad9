"""What changed between two versions of the rules, entry by entry and field by field.

The diff is worked out on the two complete exports (``Rules.export_text``) as the history keeps
them, parsed back into TOML tables, so it is exact whatever the rules looked like when loaded.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["EntryChange", "FieldChange", "diff_exports", "toml_value"]

# The entries of each section and the key that names them (``defaults`` is one entry).
_SECTIONS = (("defaults", None), ("sip_codes", "code"), ("outcomes", "code"), ("plans", "id"))
_DURATION_UNITS = {"days", "hours", "minutes"}

Change = Literal["added", "removed", "changed"]


@dataclass(frozen=True, slots=True)
class FieldChange:
    """One field of an entry: ``old`` None when the field was added, ``new`` None when removed."""

    field: str
    old: Any
    new: Any

    def to_json(self) -> dict[str, Any]:
        return {"field": self.field, "old": self.old, "new": self.new}

    def __str__(self) -> str:
        return f"{self.field}: {toml_value(self.old)} -> {toml_value(self.new)}"


@dataclass(frozen=True, slots=True)
class EntryChange:
    """A SIP code, an outcome, a plan (or the defaults) added, removed or changed."""

    section: str
    entry: str
    change: Change
    fields: tuple[FieldChange, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "section": self.section,
            "entry": self.entry,
            "change": self.change,
            "fields": [field.to_json() for field in self.fields],
        }


def toml_value(value: Any) -> str:
    """``value`` as TOML writes it inline (``{ minutes = 15 }``); ``-`` for no value."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, dict):
        inner = ", ".join(f"{key} = {toml_value(item)}" for key, item in value.items())
        return f"{{ {inner} }}" if inner else "{}"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    return str(value)


def _fields(entry: dict[str, Any]) -> dict[str, Any]:
    """An entry's fields; a table of named items (``system_recalls``, ``calling_hours``) is
    opened one level (``system_recalls.SYSBUSY``), a duration is one value."""
    fields: dict[str, Any] = {}
    for name, value in entry.items():
        if isinstance(value, dict) and not set(value) <= _DURATION_UNITS:
            fields.update((f"{name}.{key}", item) for key, item in value.items())
        else:
            fields[name] = value
    return fields


def _entries(data: dict[str, Any], section: str, key: str | None) -> dict[str, dict[str, Any]]:
    if key is None:
        return {section: data.get(section, {})}
    return {str(row[key]): row for row in data.get(section, [])}


def _changes(section: str, old: dict[str, Any], new: dict[str, Any]) -> Iterator[EntryChange]:
    for name in [*old, *(name for name in new if name not in old)]:
        before, after = old.get(name), new.get(name)
        if before is None or after is None:
            change: Change = "added" if before is None else "removed"
            fields = _fields(after if before is None else before)  # type: ignore[arg-type]
            yield EntryChange(
                section,
                name,
                change,
                tuple(
                    FieldChange(field, None, value) if change == "added"
                    else FieldChange(field, value, None)
                    for field, value in fields.items()
                ),
            )  # fmt: skip
            continue
        was, now = _fields(before), _fields(after)
        changed = tuple(
            FieldChange(field, was.get(field), now.get(field))
            for field in [*was, *(field for field in now if field not in was)]
            if was.get(field) != now.get(field)
        )
        if changed:
            yield EntryChange(section, name, "changed", changed)


def diff_exports(old: str, new: str) -> list[EntryChange]:
    """The entries changed from the rules exported as ``old`` to those exported as ``new``."""
    before, after = tomllib.loads(old), tomllib.loads(new)
    return [
        change
        for section, key in _SECTIONS
        for change in _changes(
            section, _entries(before, section, key), _entries(after, section, key)
        )
    ]
