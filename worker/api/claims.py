"""Claims, the dialer's pull (DESIGN.md section 8): ``POST /v1/plans/{plan_id}/claims`` hands out
dial-eligible phones of a plan under a lease, ``DELETE /v1/claims/{lease_id}`` gives one back.

The same claim as ``recall phones claim`` (``store.claims``): callbacks first, then the longest
eligible; safe under many dialers and several API processes at once. The claimant is the token's
name. A dialer's, and only a dialer's: a claim changes what other dialers get.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from litestar import Request, Response, Router, delete, post
from litestar.datastructures import State
from litestar.exceptions import NotFoundException
from litestar.status_codes import HTTP_200_OK, HTTP_204_NO_CONTENT

from worker.api.auth import allow, caller
from worker.api.errors import documented
from worker.api.models import Claim, ClaimRequest, shaped
from worker.api.rules import rules_now
from worker.store.claims import claim_phones, release_claim
from worker.store.database import session_scope

__all__ = ["router"]

CLAIMERS = ("dialer",)


@post(
    "/v1/plans/{plan_id:str}/claims",
    sync_to_thread=True,
    status_code=HTTP_200_OK,
    responses=documented(401, 403, 404),
)
def claim(
    request: Request[Any, Any, Any], state: State, plan_id: str, data: ClaimRequest
) -> list[Claim]:
    """Up to ``limit`` dial-eligible phones of the plan, none under a live lease: personal and
    anyone callbacks first, then the oldest ``eligible_at``. Each is leased to the caller for
    ``lease_s`` seconds: no other claim gets it until the lease ends, a call result for it
    arrives, or it is given back. An empty list when none is free; 404 for a plan not in the
    rules in force."""
    with session_scope(state.engine) as session:
        claimed = claim_phones(
            session,
            plan_id,
            limit=data.limit,
            lease_s=data.lease_s,
            now=datetime.now(UTC),
            claimant=caller(request).name,
        )
    # A plan has phones only if it was in the rules: look it up only when nothing was claimed.
    if not claimed and plan_id not in rules_now(state).plans:
        raise NotFoundException(f"unknown plan {plan_id!r}: not in the rules in force")
    return [shaped(each.to_json(), Claim) for each in claimed]


@delete(
    "/v1/claims/{lease_id:str}",
    sync_to_thread=True,
    status_code=HTTP_204_NO_CONTENT,
    responses=documented(401, 403, 404),
)
def give_back(state: State, lease_id: str) -> Response[None]:
    """Give a claimed phone back before its lease ends: it is claimable again at once. 404 when
    no live lease has that id (unknown, ended by a call result, or run out)."""
    with session_scope(state.engine) as session:
        released = release_claim(session, lease_id, datetime.now(UTC))
    if not released:
        raise NotFoundException(f"no live lease {lease_id!r}")
    return Response(None, status_code=HTTP_204_NO_CONTENT)


router = Router("/", route_handlers=[claim, give_back], guards=[allow(CLAIMERS)], tags=["claims"])
