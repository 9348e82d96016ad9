"""The dead-letter store: every rejected input kept whole with its reason, for operators.

``Letter.of`` is the one way a dead letter is made (ingestion, the tasks, the consumer, replay);
it is stored as it came, as far as the database can hold it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from worker.domain.intake import raw_text
from worker.store.bulk import chunks
from worker.store.models import DeadLetter

__all__ = ["MAX_DEAD_LETTER_CHARS", "Letter", "record_dead_letters", "record_new_dead_letters"]


# A dead letter keeps the payload for diagnosis and replay; past this it keeps the start.
MAX_DEAD_LETTER_CHARS = 1_000_000


def _storable(text: str | None) -> str | None:
    # PostgreSQL text cannot hold NUL; a huge payload keeps its start and says how big it was.
    if text is None:
        return None
    text = text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\u0000")
    if len(text) > MAX_DEAD_LETTER_CHARS:
        text = f"{text[:MAX_DEAD_LETTER_CHARS]}...[truncated from {len(text)} characters]"
    return text


@dataclass(frozen=True, slots=True)
class Letter:
    """A rejected input to keep: which task refused it, why, and the payload as text."""

    task: str
    reason: str
    detail: str
    payload: str
    received_at: datetime
    event_id: str | None = None

    @classmethod
    def of(
        cls,
        task: str,
        reason: str,
        detail: str,
        raw: object,
        received_at: datetime,
        event_id: str | None = None,
    ) -> Letter:
        """The dead letter of ``raw``, whatever it was (decoded JSON, text, bytes, anything)."""
        return cls(task, reason, detail, raw_text(raw), received_at, event_id)


def record_dead_letters(session: Session, letters: Iterable[Letter]) -> int:
    """Keep rejected inputs in the dead-letter store; return how many."""
    rows = [
        {
            "task": letter.task[:64],
            "event_id": _storable(letter.event_id),
            "reason": letter.reason,
            "detail": _storable(letter.detail),
            "payload": _storable(letter.payload),
            "received_at": letter.received_at,
            "status": "new",
        }
        for letter in letters
    ]
    if rows:
        session.execute(insert(DeadLetter), rows)
    return len(rows)


def record_new_dead_letters(session: Session, letters: Iterable[Letter]) -> int:
    """Keep those of ``letters`` not kept already (same task, same detail); return how many.

    Replaying the same files again must not file the same bad rows twice: a replay's detail
    names the file and line.
    """
    wanted = {(letter.task, letter.detail): letter for letter in letters}
    known: set[tuple[str, str]] = set()
    for task in {task for task, _ in wanted}:
        details = [detail for each, detail in wanted if each == task]
        for part in chunks(details):
            query = select(DeadLetter.detail).where(
                DeadLetter.task == task, DeadLetter.detail.in_(part)
            )
            known.update((task, detail) for detail in session.scalars(query))
    return record_dead_letters(
        session, (letter for key, letter in wanted.items() if key not in known)
    )
