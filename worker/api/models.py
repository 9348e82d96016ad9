"""The API's response models: msgspec Structs of the shapes the commands print with ``--json``.

They exist for the OpenAPI document and to check what goes out. A response is never built field
by field here: the store and the domain give their JSON form (``queries.phone``,
``Decision.to_json``, ``Status.to_json``...), and ``shaped`` converts it to its Struct, which
encodes to the same bytes (tests/api/test_models.py checks it on real phones and decisions).
Times stay the text the JSON form has, so that they come out exactly as the commands print them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

import msgspec

from worker.store.claims import MAX_CLAIM, MAX_LEASE_S

__all__ = [
    "Claim",
    "ClaimRequest",
    "DeadLetter",
    "Decision",
    "Error",
    "Health",
    "PendingRecall",
    "Phone",
    "PhonesPage",
    "ReplayRequest",
    "ReplaySummary",
    "RulesDiff",
    "RulesEdit",
    "RulesInForce",
    "RulesPreviewRequest",
    "RulesVersion",
    "RulesVersionText",
    "Status",
    "shaped",
]

S = TypeVar("S", bound=msgspec.Struct)


def shaped(data: Any, model: type[S]) -> S:
    """``data`` (a JSON form from the store or the domain) as ``model``; a mismatch raises."""
    return msgspec.convert(data, model, strict=True)


class Decision(msgspec.Struct, forbid_unknown_fields=True):
    """A decision (DESIGN.md section 7), as ``recall decide --json`` prints it."""

    event_id: str
    phone_id: str
    action: Literal["recall", "suppress", "duplicate", "stale", "reject"]
    due_at: str | None
    source: Literal["user_outcome", "system_outcome", "sip_code"] | None
    rule: str | None
    reason: str
    adjustments: list[str]
    warnings: list[str]
    explanation: str
    rules_version: str


class PendingRecall(msgspec.Struct, forbid_unknown_fields=True):
    due_at: str | None
    source: str | None
    rule: str | None
    reason: str | None
    #: A personal callback's owner, else null.
    agent: str | None


class Phone(msgspec.Struct, forbid_unknown_fields=True):
    """A lead phone (DESIGN.md section 7), as ``recall phones show --json`` prints it."""

    phone_id: str
    lead_id: str
    plan_id: str
    eligible: bool
    eligible_at: str | None
    pending_recall: PendingRecall | None
    last_result_at: str | None
    last_decision: Decision | None


class Claim(Phone, forbid_unknown_fields=True):
    """A claimed phone: the phone, its lease, and why it is eligible (the fired recall's reason,
    ``callback`` first) with a personal callback's agent."""

    lease_id: str
    leased_until: str
    reason: str | None
    agent: str | None


class ClaimRequest(msgspec.Struct, forbid_unknown_fields=True):
    """How many phones at most, and how long the lease holds them (seconds)."""

    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_CLAIM)] = 10
    lease_s: Annotated[int, msgspec.Meta(ge=1, le=MAX_LEASE_S)] = 300


class PhonesPage(msgspec.Struct):
    """One page of phones in id order; ``next_cursor`` null after the last page."""

    phones: list[Phone]
    next_cursor: str | None


class Error(msgspec.Struct):
    """Every error: its HTTP status and a one-line reason."""

    status_code: int
    detail: str


class Health(msgspec.Struct):
    status: str


class RulesVersion(msgspec.Struct):
    """One version of the rules history, as ``recall rules history --json`` lists it."""

    version: str
    #: Null for rules not recorded in the history yet (no worker has decided with them).
    in_force_since: str | None
    source: str
    author: str | None
    comment: str | None


class RulesVersionText(RulesVersion):
    """A version with its complete text (``recall rules export`` of it)."""

    rules: str


class RulesInForce(RulesVersionText):
    """The rules in force, and this service's rules file (``RECALL_RULES``, null: the shipped
    defaults) with its version, and whether it differs from the version in force (``note`` says
    so in one line; ``file_error`` why the file does not load)."""

    file: str | None
    file_version: str | None
    file_differs: bool
    file_error: str | None
    note: str | None


# A rules file is a few hundred lines; a megabyte is far beyond any real one.
MAX_RULES_CHARS = 1_000_000


class RulesEdit(msgspec.Struct, forbid_unknown_fields=True):
    """A whole rules file (TOML, merged over the shipped defaults) and why it changes."""

    rules: Annotated[str, msgspec.Meta(max_length=MAX_RULES_CHARS)]
    comment: Annotated[str, msgspec.Meta(min_length=1, max_length=2000)]


class RulesPreviewRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Proposed rules (a whole rules file) and how many days of stored call results to replay."""

    rules: Annotated[str, msgspec.Meta(max_length=MAX_RULES_CHARS)]
    days: Annotated[int, msgspec.Meta(ge=1, le=366)] = 7


class FieldChange(msgspec.Struct):
    field: str
    old: Any
    new: Any


class EntryChange(msgspec.Struct):
    section: str
    entry: str
    change: Literal["added", "removed", "changed"]
    fields: list[FieldChange]


class RulesDiff(msgspec.Struct):
    """``recall rules diff --json``: what changed from version ``from`` to ``to``."""

    from_: str = msgspec.field(name="from")
    to: str
    changes: list[EntryChange]


class DeadLetter(msgspec.Struct, forbid_unknown_fields=True):
    """A rejected input, as ``recall dead-letters list --json`` lists it."""

    id: int
    received_at: str | None
    task: str
    event_id: str | None
    reason: str
    detail: str
    status: str
    #: The input as it was received (its JSON text).
    payload: str


class ReplayRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Which dead letters to replay: ``ids``, or every new one when absent."""

    ids: list[Annotated[int, msgspec.Meta(ge=1, le=2**31 - 1)]] | None = None


class ReplaySummary(msgspec.Struct, forbid_unknown_fields=True):
    """``recall dead-letters replay --json``: letters taken, still refused, and the actions."""

    taken: int
    still_refused: int
    actions: dict[str, int]


class RecallFigures(msgspec.Struct, forbid_unknown_fields=True):
    pending: int | None
    due_next_hour: int | None
    overdue: int | None
    oldest_overdue_due_at: str | None
    held: int | None
    oldest_held_due_at: str | None


class RulesState(msgspec.Struct, forbid_unknown_fields=True):
    """Which rules decide: the version in force and where from, and the rules file beside it."""

    version: str | None
    source: str | None
    author: str | None
    comment: str | None
    in_force_since: str | None
    file: str | None
    file_version: str | None
    file_differs: bool
    file_error: str | None


class Status(msgspec.Struct, forbid_unknown_fields=True):
    """``recall status --json``: healthy when ``problems`` is empty."""

    healthy: bool
    problems: list[str]
    broker: str
    database: str
    rules: str
    #: Null when the database does not answer.
    rules_in_force: RulesState | None
    workers: list[str]
    queues: dict[str, int]
    recalls: RecallFigures
    replays_running: int | None
    dead_letters_new: int | None
