"""``/v1/rules``: the rules in force, the versions in force so far, one version, a diff.

What ``recall rules history|diff --json`` print, from the rules history the database keeps
(DESIGN.md section 9). Changing the rules (``PUT``) and the what-if preview are not here yet.
"""

from __future__ import annotations

from typing import Annotated

from litestar import Router, get
from litestar.datastructures import State
from litestar.exceptions import NotFoundException
from litestar.params import Parameter

from worker.api.auth import VIEWERS, allow
from worker.api.errors import documented
from worker.api.models import RulesDiff, RulesVersion, RulesVersionText, shaped
from worker.domain.rules_diff import diff_exports
from worker.runtime.rules_cache import current_rules
from worker.store.database import session_scope
from worker.store.rules_versions import (
    UnknownVersion,
    VersionInForce,
    find_version,
    rules_history,
    source_of,
)

__all__ = ["router"]


def _with_text(row: VersionInForce) -> RulesVersionText:
    return shaped({**row.to_json(), "rules": row.rules}, RulesVersionText)


@get("/", sync_to_thread=True, responses=documented(401, 403))
def rules_in_force(state: State) -> RulesVersionText:
    """The rules in force: the newest version of the history, with its complete text.

    Before any version is recorded (no worker has decided yet), the rules this service loads
    (RECALL_RULES, else the shipped defaults), with ``in_force_since`` null.
    """
    with session_scope(state.engine) as session:
        history = rules_history(session)
    if history:
        return _with_text(history[0])
    rules = current_rules()
    return RulesVersionText(
        version=rules.version,
        in_force_since=None,
        source=source_of(rules),
        author=None,
        comment=None,
        rules=rules.export_text(),
    )


@get("/versions", sync_to_thread=True, responses=documented(401, 403))
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


@get("/versions/{version:str}", sync_to_thread=True, responses=documented(401, 403, 404))
def version(state: State, version: str) -> RulesVersionText:
    """One version (12 hex digits, or a unique prefix), with its complete text."""
    return _with_text(_find(state, version))


@get("/diff", sync_to_thread=True, responses=documented(401, 403, 404))
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


router = Router(
    "/v1/rules",
    route_handlers=[rules_in_force, versions, version, diff],
    guards=[allow(VIEWERS)],
    tags=["rules"],
)
