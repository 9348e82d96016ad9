"""``POST /v1/decide``: one event against the rules in force alone (the version the workers decide
with), as ``recall decide`` does against its rules file."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Annotated, Any

from litestar import Request, Router, post
from litestar.datastructures import State
from litestar.openapi.spec import (
    OpenAPIFormat,
    OpenAPIMediaType,
    OpenAPIType,
    Operation,
    RequestBody,
    Schema,
)
from litestar.params import Parameter
from litestar.status_codes import HTTP_200_OK

from worker.api.auth import DIALERS, allow
from worker.api.errors import Unprocessable, documented
from worker.api.models import Decision, shaped
from worker.api.rules import rules_now
from worker.domain.events import InvalidEvent, event_json_schema
from worker.domain.intake import Refused, decide_alone, parse_instant

__all__ = ["EVENT_SCHEMA", "router"]


def _openapi_schema(json_schema: dict[str, Any]) -> Schema:
    """A JSON Schema (msgspec's output for the event contract) as Litestar's OpenAPI 3.1 schema
    object: the same keywords in snake case, nested schemas converted in turn."""
    fields: dict[str, Any] = {}
    for key, value in json_schema.items():
        if key == "$schema":  # the document's dialect; OpenAPI 3.1 has it already
            continue
        name = re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower()
        if name == "type":
            value = OpenAPIType(value)
        elif name == "format":
            value = OpenAPIFormat(value)
        elif name == "properties":
            value = {field: _openapi_schema(schema) for field, schema in value.items()}
        elif name == "any_of":
            value = [_openapi_schema(schema) for schema in value]
        fields[name] = value
    return Schema(**fields)


#: The event contract, from the one schema the worker and replay validate with (DESIGN section 5),
#: as docs/event.schema.json publishes it. (Inline in the operation: Litestar builds the document's
#: ``components.schemas`` from the handlers' types alone.)
EVENT_SCHEMA = _openapi_schema(event_json_schema())


@dataclass
class _EventBody(Operation):
    """The operation with the event as its body, documented by the contract's schema. The
    handler reads the raw body and ``parse_event`` validates it, so that a 422 carries the
    contract's one-line reason (the same as ``recall decide``'s), not the framework's."""

    def __post_init__(self) -> None:
        self.request_body = RequestBody(
            content={"application/json": OpenAPIMediaType(schema=EVENT_SCHEMA)}, required=True
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
