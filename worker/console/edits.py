"""The console's edits: a form's fields applied to the TOML document of the rules in force.

Each edit takes the parsed export of the rules in force (``tomllib`` of ``Rules.export_text``) and
a form, and returns the changed document; ``proposed_text`` writes it back as a whole rules file,
which is then checked by the same loader as ``recall rules check`` (``put_rules`` does it again on
save). A form that cannot make a document at all (a number that is not one, a built-in SIP code's
locked field changed) raises ``EditError``, one line, shown on the form. Pure: no database, no web.
"""

from __future__ import annotations

import copy
import re
import tomllib
from collections.abc import Mapping
from typing import Any

import tomli_w

from worker.domain.rules import WEEKDAYS

__all__ = [
    "SIP_CLASS",
    "EditError",
    "edit_outcome",
    "edit_plan",
    "edit_sip_code",
    "entry",
    "parse_export",
    "proposed_text",
]

#: A class fallback row's code: ``4xx``, ``5xx``, ``6xx``.
SIP_CLASS = re.compile(r"[456]xx")
_UNITS = ("days", "hours", "minutes")
_POLICIES = ("after", "never", "inherit", "callback")


class EditError(ValueError):
    """A form that makes no rules document: one line, shown on the form; nothing is saved."""


Form = Mapping[str, str]


def parse_export(text: str) -> dict[str, Any]:
    """The TOML document of a rules export, as tables and arrays."""
    return tomllib.loads(text)


def proposed_text(document: Mapping[str, Any]) -> str:
    """``document`` as a whole rules file."""
    return tomli_w.dumps(dict(document))


def entry(document: Mapping[str, Any], section: str, key: str, name: str) -> dict[str, Any] | None:
    """The row of ``section`` whose ``key`` reads as ``name`` (codes compared as text), or None."""
    for row in document.get(section, []):
        if str(row.get(key)) == name:
            return dict(row)
    return None


def _whole(form: Form, field: str, label: str, *, minimum: int = 0) -> int | None:
    text = form.get(field, "").strip()
    if not text:
        return None
    if not re.fullmatch(r"[0-9]+", text) or int(text) < minimum:
        raise EditError(f"{label}: must be a whole number of at least {minimum}, got {text!r}")
    return int(text)


def _duration(form: Form, prefix: str = "", label: str = "recall time") -> dict[str, int] | None:
    """``{days, hours, minutes}`` from the fields ``<prefix>days`` etc.; None when all empty."""
    values = {unit: _whole(form, prefix + unit, f"{label} {unit}") for unit in _UNITS}
    if all(value is None for value in values.values()):
        return None
    table = {unit: value for unit, value in values.items() if value}
    return table or {"minutes": 0}


def _yes(form: Form, field: str, label: str) -> bool | None:
    text = form.get(field)
    if text is None:
        return None
    if text not in ("yes", "no"):
        raise EditError(f"{label}: must be yes or no, got {text!r}")
    return text == "yes"


def _sip_code(text: str) -> int | str:
    text = text.strip().lower()
    if SIP_CLASS.fullmatch(text):
        return text
    if re.fullmatch(r"[0-9]{3}", text) and 400 <= int(text) <= 699:
        return int(text)
    raise EditError(f"code: a SIP failure code is 400-699 (or 4xx, 5xx, 6xx), got {text!r}")


def _replace(
    document: Mapping[str, Any], section: str, key: str, name: str | None, row: dict[str, Any]
) -> dict[str, Any]:
    """``document`` with the row named ``name`` replaced by ``row`` (added when ``name`` is None),
    refusing a row whose name another row has."""
    changed = copy.deepcopy(dict(document))
    rows = changed.setdefault(section, [])
    clash = entry(changed, section, key, str(row[key]))
    if clash is not None and (name is None or str(row[key]) != name):
        raise EditError(f"{key} {row[key]}: exists already (select it in the list to edit it)")
    if name is None:
        rows.append(row)
    else:
        rows[:] = [row if str(each.get(key)) == name else each for each in rows]
    return changed


def edit_sip_code(
    document: Mapping[str, Any], code: str | None, form: Form, *, builtin: bool
) -> dict[str, Any]:
    """The document with SIP code ``code`` (None: a new code) set from ``form``.

    Fields: ``code``, ``active`` (yes/no), ``description``, ``recall`` (yes/no), ``days``,
    ``hours``, ``minutes``. A built-in code's ``code`` and ``active`` are locked: the form does
    not send them (disabled inputs), and a request that sends other values is refused here.
    """
    old = entry(document, "sip_codes", "code", code) if code is not None else None
    if code is not None and old is None:
        raise EditError(f"no SIP code {code} in the rules in force")
    active = _yes(form, "active", "active")
    new_code = _sip_code(form["code"]) if form.get("code", "").strip() else None
    locked_changed = old is not None and (
        (new_code is not None and new_code != old["code"])
        or (active is not None and active != old.get("active", True))
    )
    if builtin and locked_changed:
        raise EditError(
            f"SIP code {code} is built-in (a shipped code): its code and active flag are locked"
        )
    if new_code is None:
        if old is None:
            raise EditError("code: required for a new SIP code")
        new_code = old["code"]
    row: dict[str, Any] = {
        "code": new_code,
        "description": form.get("description", old.get("description", "") if old else "").strip(),
        "active": active if active is not None else (old.get("active", True) if old else True),
    }
    recall = _yes(form, "recall", "recall")
    row["recall"] = recall if recall is not None else (old.get("recall", False) if old else False)
    after = _duration(form)
    if row["recall"]:
        row["recall_after"] = after or (old or {}).get("recall_after") or {"minutes": 0}
    return _replace(document, "sip_codes", "code", code, row)


def edit_outcome(document: Mapping[str, Any], code: str | None, form: Form) -> dict[str, Any]:
    """The document with outcome ``code`` (None: a new one) set from ``form``.

    Fields: ``code``, ``kind`` (system/user), ``description``, ``recall`` (after, never, inherit,
    callback), ``days``, ``hours``, ``minutes`` and ``not_same_day`` (yes/no).
    """
    old = entry(document, "outcomes", "code", code) if code is not None else None
    if code is not None and old is None:
        raise EditError(f"no outcome code {code} in the rules in force")
    base = old or {}
    new_code = form.get("code", "").strip() or base.get("code")
    if not new_code:
        raise EditError("code: required for a new outcome code")
    kind = form.get("kind", base.get("kind", ""))
    if kind not in ("system", "user"):
        raise EditError(f"kind: must be system or user, got {kind!r}")
    recall = form.get("recall", base.get("recall", ""))
    if recall not in _POLICIES:
        raise EditError(f"recall: must be one of {', '.join(_POLICIES)}, got {recall!r}")
    row: dict[str, Any] = {
        "code": new_code,
        "kind": kind,
        "description": form.get("description", base.get("description", "")).strip(),
        "recall": recall,
    }
    if recall in ("after", "callback"):
        row["recall_after"] = _duration(form) or base.get("recall_after") or {"minutes": 0}
    not_same_day = _yes(form, "not_same_day", "not the same day")
    if not_same_day if not_same_day is not None else base.get("not_same_day", False):
        row["not_same_day"] = True
    return _replace(document, "outcomes", "code", code, row)


def _inline(form: Form, field: str, label: str) -> Any:
    """A TOML inline value typed in a field (an array of caps); empty: an empty array."""
    text = form.get(field, "").strip() or "[]"
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError as error:
        raise EditError(f"{label}: not a TOML value ({error}): {text!r}") from None


def edit_plan(document: Mapping[str, Any], plan_id: str, form: Form) -> dict[str, Any]:
    """The document with plan ``plan_id``'s System Recalls section set from ``form``.

    Fields: ``can_recall`` (yes/no), ``timezone``, ``max_recalls`` (empty: none), per system
    outcome ``sr_<CODE>_days|hours|minutes`` (all empty: the outcome table's time),
    ``calling_hours_on`` (yes/no: no table is always open) and ``ch_<day>`` (``09:00-20:00``,
    empty: closed), ``max_attempts`` and ``lead_max_attempts`` (TOML inline arrays of caps) and
    ``closed_dates`` (dates separated by spaces, commas or lines).
    """
    old = entry(document, "plans", "id", plan_id)
    if old is None:
        raise EditError(f"no plan {plan_id} in the rules in force")
    row: dict[str, Any] = {"id": plan_id}
    can_recall = _yes(form, "can_recall", "Can Recall")
    row["can_recall"] = can_recall if can_recall is not None else old.get("can_recall", True)
    row["timezone"] = form.get("timezone", old.get("timezone", "")).strip()
    codes = [
        str(outcome["code"])
        for outcome in document.get("outcomes", [])
        if outcome.get("kind") == "system"
    ]
    recalls = {
        code: after
        for code in codes
        if (after := _duration(form, f"sr_{code}_", f"system recall {code}")) is not None
    }
    if recalls:
        row["system_recalls"] = recalls
    if form.get("calling_hours_on", "no") == "yes":
        row["calling_hours"] = {
            day: hours for day in WEEKDAYS if (hours := form.get(f"ch_{day}", "").strip())
        }
    row["max_attempts"] = _inline(form, "max_attempts", "max attempts")
    row["lead_max_attempts"] = _inline(form, "lead_max_attempts", "lead max attempts")
    row["closed_dates"] = re.split(r"[\s,]+", form.get("closed_dates", "").strip())
    row["closed_dates"] = [each for each in row["closed_dates"] if each]
    max_recalls = _whole(form, "max_recalls", "max recalls")
    if max_recalls is not None:
        row["max_recalls"] = max_recalls
    return _replace(document, "plans", "id", plan_id, row)
