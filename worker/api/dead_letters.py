"""``/v1/dead-letters``: list the rejected inputs, and replay them after a fix.

The same as ``recall dead-letters list|replay --json``; replaying is an editor's.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from litestar import Router, get, post
from litestar.datastructures import State
from litestar.params import Parameter
from litestar.status_codes import HTTP_200_OK

from worker.api.auth import EDITORS, VIEWERS, allow
from worker.api.errors import Unprocessable, documented
from worker.api.models import DeadLetter, ReplayRequest, ReplaySummary, shaped
from worker.api.rules import rules_now
from worker.store.database import session_scope
from worker.store.ingest import replay_dead_letters_in_force
from worker.store.queries import dead_letters, dead_letters_problem

__all__ = ["router"]


@get("/", sync_to_thread=True, guards=[allow(VIEWERS)], responses=documented(401, 403))
def list_letters(
    state: State,
    limit: Annotated[int, Parameter(ge=1, le=10_000)] = 1000,
    include_replayed: bool = False,
) -> list[DeadLetter]:
    """Dead letters, oldest first: the new ones, or all with ``include_replayed``."""
    with session_scope(state.engine) as session:
        rows = dead_letters(session, include_replayed=include_replayed, limit=limit)
    return [shaped(row, DeadLetter) for row in rows]


@post(
    "/replay",
    sync_to_thread=True,
    status_code=HTTP_200_OK,
    guards=[allow(EDITORS)],
    responses=documented(401, 403, 422),
)
def replay(state: State, data: ReplayRequest | None = None) -> ReplaySummary:
    """Run the dead letters (``ids``, else every new one) through validation and the rules in
    force again; those that pass are decided and stored, the rest stay with their new reason."""
    ids = (data.ids if data is not None else None) or []
    rules = rules_now(state)
    with session_scope(state.engine) as session:
        problem = dead_letters_problem(session, ids)
        if problem is not None:
            raise Unprocessable(problem)
        result = replay_dead_letters_in_force(
            session, rules, datetime.now(UTC), ids, skew_s=state.settings.clock_skew_s
        )
    return shaped(result, ReplaySummary)


router = Router(
    "/v1/dead-letters",
    route_handlers=[list_letters, replay],
    tags=["dead letters"],
)
