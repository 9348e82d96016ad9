"""``/v1/rules``: the rules in force, the versions in force so far, one version, a diff.

What ``recall rules history|diff --json`` print, from the rules history the database keeps
(DESIGN.md section 9); an edit (``PUT``: a new version, its author the token's name) and the
what-if preview of proposed rules over the stored call results (``recall rules preview``).
"""

from __future__ import annotations

import weakref
from datetime import UTC, datetime
from typing import Annotated, Any

from litestar import Request, Router, get, post, put
from litestar.datastructures import State
from litestar.exceptions import NotFoundException
from litestar.params import Parameter
from litestar.status_codes import HTTP_200_OK
from sqlalchemy import Engine

from worker.api.auth import EDITORS, VIEWERS, allow, caller
from worker.api.errors import Unprocessable, documented
from worker.api.models import (
    RulesDiff,
    RulesEdit,
    RulesInForce,
    RulesPreviewRequest,
    RulesVersion,
    RulesVersionText,
    shaped,
)
from worker.domain.rules import Rules, RulesError, rules_from_text
from worker.domain.rules_diff import diff_exports
from worker.replay.preview import preview_rules
from worker.runtime.rules_cache import current_rules, stored_rules
from worker.runtime.status import rules_note, rules_state
from worker.store.database import session_scope
from worker.store.rules_versions import (
    EDIT_NAME,
    UnknownVersion,
    VersionInForce,
    find_version,
    in_force,
    newest_id,
    put_rules,
    rules_history,
    source_of,
)

__all__ = ["router", "rules_now"]


def _with_text(row: VersionInForce) -> RulesVersionText:
    return shaped({**row.to_json(), "rules": row.rules}, RulesVersionText)


@get("/", sync_to_thread=True, guards=[allow(VIEWERS)], responses=documented(401, 403))
def rules_in_force_now(state: State) -> RulesInForce:
    """The rules in force: the newest version of the history from a rules file or an edit, with
    its complete text, and whether the ``RECALL_RULES`` file (else the shipped defaults) of this
    service is another version (``file_differs``, ``note``).

    Before any version is recorded (no worker has decided yet), the rules this service loads
    (RECALL_RULES, else the shipped defaults), with ``in_force_since`` null.
    """
    with session_scope(state.engine) as session:
        row = in_force(session)
        facts = rules_state(session, state.settings)
    if row is not None:
        shown = {**row.to_json(), "rules": row.rules}
    else:
        rules = current_rules()
        shown = {
            "version": rules.version,
            "in_force_since": None,
            "source": source_of(rules),
            "author": None,
            "comment": None,
            "rules": rules.export_text(),
        }
    file = {key: facts[key] for key in ("file", "file_version", "file_differs", "file_error")}
    return shaped({**shown, **file, "note": rules_note(facts)}, RulesInForce)


@get("/versions", sync_to_thread=True, guards=[allow(VIEWERS)], responses=documented(401, 403))
def versions(state: State) -> list[RulesVersion]:
    """Every version in force so far, newest first (``recall rules history --json``)."""
    with session_scope(state.engine) as session:
        rows = rules_history(session)
    return [shaped(row.to_json(), RulesVersion) for row in rows]


def _find(state: State, prefix: str) -> VersionInForce:
    with session_scope(state.engine) as session:
        try:
            return find_version(session, prefix)
        except UnknownVersion as error:
            raise NotFoundException(str(error)) from None


@get(
    "/versions/{version:str}",
    sync_to_thread=True,
    guards=[allow(VIEWERS)],
    responses=documented(401, 403, 404),
)
def version(state: State, version: str) -> RulesVersionText:
    """One version (12 hex digits, or a unique prefix), with its complete text."""
    return _with_text(_find(state, version))


@get("/diff", sync_to_thread=True, guards=[allow(VIEWERS)], responses=documented(401, 403, 404))
def diff(
    state: State,
    from_: Annotated[str, Parameter(query="from", description="A version or a unique prefix.")],
    to: Annotated[str, Parameter(description="A version or a unique prefix.")],
) -> RulesDiff:
    """What changed from version ``from`` to ``to``, entry by entry, field by field."""
    before, after = _find(state, from_), _find(state, to)
    changes = diff_exports(before.rules, after.rules)
    data = {"from": before.version, "to": after.version, "changes": [c.to_json() for c in changes]}
    return shaped(data, RulesDiff)


# Per database: the history's newest row id when the version in force was last read, and its
# rules.
_seen: weakref.WeakKeyDictionary[Engine, tuple[int, Rules]] = weakref.WeakKeyDictionary()


def rules_now(state: State) -> Rules:
    """The rules in force, to decide with: the version the workers decide with (before any is
    recorded, this service's rules file, else the shipped defaults). Read only: the service never
    records its own rules file, which is the workers' to put in force.

    One small query (the newest row's id) while the history does not change; the version in force
    is read only when a new row came in, and its text loaded once (``stored_rules``).
    """
    engine: Engine = state.engine
    with session_scope(engine) as session:
        newest = newest_id(session)
        if newest is None:
            return current_rules()
        seen = _seen.get(engine)
        if seen is not None and seen[0] == newest:
            return seen[1]
        row = in_force(session)
    if row is None:  # only replays' rows so far
        return current_rules()
    rules = stored_rules(engine, row)
    _seen[engine] = (newest, rules)
    return rules


def _proposed(text: str) -> Rules:
    try:
        return rules_from_text(text, EDIT_NAME)
    except RulesError as error:
        raise Unprocessable(str(error)) from None


@put("/", sync_to_thread=True, guards=[allow(EDITORS)], responses=documented(401, 403, 422))
def edit(request: Request[Any, Any, Any], state: State, data: RulesEdit) -> RulesVersionText:
    """Put a whole rules file in force (merged over the shipped defaults, as a ``RECALL_RULES``
    file is), with a comment; the token's name is its author. Checked as ``recall rules check``
    checks a file: 422 with the line it prints. Rules already in force record nothing and come
    back as they are. Running workers take a new version within seconds."""
    if not data.comment.strip():
        raise Unprocessable("comment: must not be empty")
    with session_scope(state.engine) as session:
        try:
            row = put_rules(
                session,
                data.rules,
                author=caller(request).name,
                comment=data.comment,
                now=datetime.now(UTC),
            )
        except RulesError as error:
            raise Unprocessable(str(error)) from None
    return _with_text(row)


@post(
    "/preview",
    sync_to_thread=True,
    guards=[allow(VIEWERS)],
    status_code=HTTP_200_OK,
    responses=documented(401, 403, 422),
)
def preview(state: State, data: RulesPreviewRequest) -> dict[str, Any]:
    """What the proposed rules would have decided, against the rules in force, over the call
    results the database holds for the last ``days`` days: the JSON of ``recall replay --compare
    --json`` over those events (``summary`` under the rules in force, ``compare`` under the
    proposed ones, with the decisions that differ), as ``recall rules preview`` prints it."""
    proposed = _proposed(data.rules)
    current = rules_now(state)
    with session_scope(state.engine) as session:
        return preview_rules(session, proposed, current, days=data.days, now=datetime.now(UTC))


router = Router(
    "/v1/rules",
    route_handlers=[rules_in_force_now, versions, version, diff, edit, preview],
    tags=["rules"],
)
