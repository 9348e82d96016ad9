"""``/v1/phones``: one phone, and phones page by page (the phone shape of DESIGN.md section 7)."""

from __future__ import annotations

from typing import Annotated

from litestar import Router, get
from litestar.datastructures import State
from litestar.exceptions import NotFoundException
from litestar.params import Parameter

from worker.api.auth import DIALERS, allow
from worker.api.errors import Unprocessable, documented
from worker.api.models import Phone, PhonesPage, shaped
from worker.store.database import session_scope
from worker.store.queries import phone, phones_page

__all__ = ["router"]

#: The largest page, and the page size when ``limit`` is not given.
MAX_PAGE, DEFAULT_PAGE = 1000, 100


@get("/{phone_id:str}", sync_to_thread=True, responses=documented(401, 403, 404))
def show_phone(state: State, phone_id: str) -> Phone:
    """One lead phone: eligibility, pending recall and last decision (404 if never seen)."""
    with session_scope(state.engine) as session:
        found = phone(session, phone_id)
    if found is None:
        raise NotFoundException(f"no phone {phone_id!r}")
    return shaped(found, Phone)


@get("/", sync_to_thread=True, responses=documented(401, 403, 422))
def list_phones(
    state: State,
    plan_id: str | None = None,
    eligible: bool | None = None,
    limit: Annotated[int, Parameter(ge=1, le=MAX_PAGE)] = DEFAULT_PAGE,
    cursor: Annotated[
        str | None,
        Parameter(
            description="The next_cursor of the page before (opaque); absent for the first page."
            " One this service did not give is refused (422)."
        ),
    ] = None,
) -> PhonesPage:
    """Phones in id order, a page at a time, of one plan and/or eligible or not."""
    with session_scope(state.engine) as session:
        try:
            rows, next_cursor = phones_page(
                session, plan_id=plan_id, eligible=eligible, limit=limit, cursor=cursor
            )
        except ValueError as error:
            raise Unprocessable(str(error)) from None
    return shaped({"phones": rows, "next_cursor": next_cursor}, PhonesPage)


router = Router(
    "/v1/phones",
    route_handlers=[show_phone, list_phones],
    guards=[allow(DIALERS)],
    tags=["phones"],
)
