"""``POST /v1/decide``: one event against the rules in force alone (the version the workers decide
with), as ``recall decide`` does against its rules file."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Annotated, Any

from litestar import Request, Router, post
from litestar.datastructures import State
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIType, Operation, RequestBody, Schema
from litestar.params import Parameter
from litestar.status_codes import HTTP_200_OK

from worker.api.auth import DIALERS, allow
from worker.api.errors import Unprocessable, documented
from worker.api.models import Decision, shaped
from worker.api.rules import rules_now
from worker.domain.events import InvalidEvent
from worker.domain.intake import Refused, decide_alone, parse_instant

__all__ = ["router"]


@dataclass
class _EventBody(Operation):
    """The operation with the event as its body: a JSON object, validated by ``parse_event``
    itself (its one-line reasons are the contract's), so the handler reads the raw body."""

    def __post_init__(self) -> None:
        event = Schema(
            type=OpenAPIType.OBJECT,
            description="A call-result event (DESIGN.md section 5).",
            additional_properties=True,
        )
        self.request_body = RequestBody(
            content={"application/json": OpenAPIMediaType(schema=event)}, required=True
        )


@post("/", status_code=HTTP_200_OK, operation_class=_EventBody, responses=documented(401, 403, 422))
async def decide(
    request: Request[Any, Any, Any],
    state: State,
    now: Annotated[
        str | None,
        Parameter(description="Decide as of this ISO-8601 instant (default: its occurred_at)."),
    ] = None,
) -> Decision:
    """The decision for one event against the rules in force alone: no history, no database.

    422 with the line ``recall decide`` prints for a malformed event or an unknown plan.
    """
    try:
        moment = parse_instant(now, "now") if now is not None else None
    except InvalidEvent as error:
        raise Unprocessable(str(error)) from None
    payload = await request.body()
    rules = await asyncio.to_thread(rules_now, state)
    try:
        _, decision = decide_alone(payload, rules, moment, state.settings.clock_skew_s)
    except Refused as error:
        raise Unprocessable(str(error)) from None
    return shaped(decision.to_json(), Decision)


router = Router("/v1/decide", route_handlers=[decide], guards=[allow(DIALERS)], tags=["decide"])
