"""The console's pages: SIP codes, outcomes, plans, a phone's history, dead letters, rules history.

Every page shows which rules decide (the version in force, where it came from, and a warning when
the RECALL_RULES file differs). Every change is made to the TOML document of the rules in force
(worker/console/edits.py), checked by the loader of ``recall rules check``, then shown as a
preview (the what-if over the stored call results, and the diff) with a comment to write; only
the preview's Save stores it (``put_rules``, the signed-in token's name as author), and only if
the version it was based on is still in force.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from litestar import Request, Router, get, post
from litestar.datastructures import State
from litestar.enums import RequestEncodingType
from litestar.params import Body
from litestar.response import Redirect, Template
from litestar.status_codes import HTTP_200_OK, HTTP_422_UNPROCESSABLE_ENTITY
from sqlalchemy import select
from sqlalchemy.orm import Session

from worker.api.rules import rules_now
from worker.console.edits import (
    EditError,
    edit_outcome,
    edit_plan,
    edit_sip_code,
    entry,
    parse_export,
    proposed_text,
)
from worker.console.session import CONSOLE_ROLES, sign_in, signed_in, user
from worker.domain.rules import WEEKDAYS, Rules, RulesError, rules_from_text
from worker.domain.rules_diff import diff_exports
from worker.replay.preview import MAX_DAYS, preview_rules
from worker.runtime.rules_cache import current_rules
from worker.runtime.status import rules_note, rules_state
from worker.store.database import session_scope
from worker.store.ingest import replay_dead_letters_in_force
from worker.store.models import ProcessedEvent
from worker.store.queries import dead_letters, phone
from worker.store.rules_versions import (
    EDIT_NAME,
    in_force,
    put_rules,
    rules_history,
    rules_of,
    source_of,
)

__all__ = ["router"]

Form = Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)]
EDITORS = ("editor",)
#: The pages every signed-in operator reads.
READERS = [signed_in(CONSOLE_ROLES)]


def _edit(path: str) -> post:
    """A form post that changes something: an editor's (a viewer's session gets 403)."""
    return post(path, sync_to_thread=True, guards=[signed_in(EDITORS)], status_code=HTTP_200_OK)


#: The what-if's default window: a week of call results.
PREVIEW_DAYS = 7


@dataclass(frozen=True, slots=True)
class InForce:
    """The rules in force, their version and their TOML document."""

    rules: Rules
    version: str
    text: str

    @property
    def document(self) -> dict[str, Any]:
        return parse_export(self.text)


def _in_force(session: Session) -> InForce:
    """The version in force; before any is recorded, the rules file's (what workers will record)."""
    row = in_force(session)
    if row is not None:
        return InForce(rules_of(row), row.version, row.rules)
    rules = current_rules()
    return InForce(rules, rules.version, rules.export_text())


def _page(
    request: Request[Any, Any, Any],
    session: Session,
    name: str,
    status_code: int = HTTP_200_OK,
    *,
    template: str | None = None,
    **context: Any,
) -> Template:
    """The page ``name`` (its template ``name``.html unless ``template`` is given)."""
    state = rules_state(session, request.app.state.settings)
    if state["version"] is None:  # nothing recorded yet: the file's rules will be
        rules = current_rules()
        where = source_of(rules)
        state = {**state, "version": rules.version, "source": f"{where} (not yet recorded)"}
    return Template(
        template_name=f"{template or name}.html",
        context={
            "user": user(request),
            "rules_state": state,
            "rules_note": rules_note(state),
            "page": name,
            **context,
        },
        status_code=status_code,
    )


# Sign in and out -------------------------------------------------------------------------------


@get("/", include_in_schema=False)
async def home() -> Redirect:
    return Redirect("/console/sip-codes")


@get("/login", sync_to_thread=False)
def login_form(request: Request[Any, Any, Any]) -> Template | Redirect:
    if user(request) is not None:
        return Redirect("/console/sip-codes")
    return Template(template_name="login.html", context={"error": None, "page": "login"})


@post("/login", sync_to_thread=False, status_code=HTTP_200_OK)
def login(request: Request[Any, Any, Any], data: Form) -> Template | Redirect:
    token = sign_in(request, data.get("token", ""))
    if token is not None and token.role in CONSOLE_ROLES:
        return Redirect("/console/sip-codes")
    if token is None:
        error, status = "That token is not valid.", 401
    else:
        error = (
            f"The token {token.name} has the role dialer: it is for the API only. Sign in with"
            " the token of a viewer or an editor."
        )
        status = 403
    return Template(
        template_name="login.html",
        context={"error": error, "page": "login"},
        status_code=status,
    )


@post("/logout", sync_to_thread=False, status_code=HTTP_200_OK)
def logout(request: Request[Any, Any, Any]) -> Redirect:
    request.clear_session()
    return Redirect("/console/login")


# Editing an entry: the form, its error, the confirm step of a new entry, the preview -------------


@dataclass(frozen=True, slots=True)
class _Entries:
    """A page of entries the console edits (SIP codes, outcome codes, plans)."""

    name: str  # the page's name (and its template's, unless ``template``)
    path: str  # where it is
    key: str  # the query parameter selecting an entry there
    kind: str  # what a new entry is, as the confirm step names it
    #: The page's rows and selected entry (its ``selected``: None when none or unknown), from the
    #: rules in force, the selected entry's name and the page's own query parameters.
    context: Callable[..., dict[str, Any]]
    #: The rules document with the entry (None: a new one) changed by a form; raises ``EditError``.
    edit: Callable[[InForce, str | None, Mapping[str, str]], dict[str, Any]]
    template: str | None = None

    def page(
        self,
        request: Request[Any, Any, Any],
        session: Session,
        current: InForce,
        selected: str | None,
        error: str | None = None,
        form: Mapping[str, str] | None = None,
        **query: Any,
    ) -> Template:
        """The page with ``selected`` (None: no entry) and a form's one-line error (then 422)."""
        return _page(
            request,
            session,
            self.name,
            status_code=HTTP_200_OK if error is None else HTTP_422_UNPROCESSABLE_ENTITY,
            template=self.template,
            **self.context(current, selected, **query),
            error=error,
            form=form or {},
            based_on=current.version,
        )


def _edited(
    request: Request[Any, Any, Any],
    state: State,
    data: Mapping[str, str],
    entries: _Entries,
    name: str | None,
) -> Template:
    """The preview of a form's change to the entry ``name`` (None: a new entry) of ``entries``.

    The form changes the rules in force (``entries.edit``); a form it refuses (``EditError``) is
    the page again with the one-line error (422). A new entry is confirmed first (the same form
    posted again with ``confirmed=yes``), then previewed.
    """
    back = entries.path if name is None else f"{entries.path}?{entries.key}={name}"
    with session_scope(state.engine) as session:
        current = _in_force(session)
        try:
            document = entries.edit(current, name, data)
        except EditError as error:
            return entries.page(request, session, current, name, str(error), data)
        if name is None and data.get("confirmed") != "yes":
            return _page(
                request, session, "confirm_new", kind=entries.kind, fields=data,
                action=f"{entries.path}/new", back=back,
            )  # fmt: skip
        return _propose(request, session, current, document, back=back)


# SIP codes -------------------------------------------------------------------------------------


def _sip_rows(current: InForce) -> list[dict[str, Any]]:
    builtin = {str(code) for code, row in current.rules.sip_codes.items() if row.builtin}
    builtin |= {str(code) for code, row in current.rules.sip_classes.items() if row.builtin}
    return [
        {**row, "key": str(row["code"]), "builtin": str(row["code"]) in builtin}
        for row in current.document.get("sip_codes", [])
    ]


def _sip_context(current: InForce, selected: str | None, inactive: bool = False) -> dict[str, Any]:
    rows = _sip_rows(current)
    chosen = next((row for row in rows if row["key"] == selected), None)
    if chosen is not None and not chosen.get("active", True):
        inactive = True  # a selected inactive code is shown with the others
    return {
        "rows": [row for row in rows if inactive or row.get("active", True)],
        "hidden": sum(1 for row in rows if not row.get("active", True)),
        "inactive": inactive,
        "selected": chosen,
    }


def _builtin(current: InForce, code: str) -> bool:
    return any(row["builtin"] for row in _sip_rows(current) if row["key"] == code)


def _edit_sip_code(current: InForce, code: str | None, form: Mapping[str, str]) -> dict[str, Any]:
    builtin = code is not None and _builtin(current, code)
    return edit_sip_code(current.document, code, form, builtin=builtin)


SIP_CODES = _Entries(
    "sip_codes", "/console/sip-codes", "code", "SIP code", _sip_context, _edit_sip_code, "codes"
)


@get("/sip-codes", sync_to_thread=True, guards=READERS)
def sip_codes(
    request: Request[Any, Any, Any], state: State, code: str | None = None, inactive: bool = False
) -> Template:
    with session_scope(state.engine) as session:
        return SIP_CODES.page(request, session, _in_force(session), code, inactive=inactive)


@_edit("/sip-codes/new")
def new_sip_code(request: Request[Any, Any, Any], state: State, data: Form) -> Template:
    """A new code: first the warning (a confirm step), then the preview."""
    return _edited(request, state, data, SIP_CODES, None)


@_edit("/sip-codes/{code:str}")
def change_sip_code(
    request: Request[Any, Any, Any], state: State, code: str, data: Form
) -> Template:
    return _edited(request, state, data, SIP_CODES, code)


# Outcome codes ---------------------------------------------------------------------------------


def _outcomes_context(current: InForce, selected: str | None) -> dict[str, Any]:
    rows = [{**row, "key": str(row["code"])} for row in current.document.get("outcomes", [])]
    return {"rows": rows, "selected": next((row for row in rows if row["key"] == selected), None)}


def _edit_outcome(current: InForce, code: str | None, form: Mapping[str, str]) -> dict[str, Any]:
    return edit_outcome(current.document, code, form)


OUTCOMES = _Entries(
    "outcomes", "/console/outcomes", "code", "outcome code", _outcomes_context, _edit_outcome,
    "codes",
)  # fmt: skip


@get("/outcomes", sync_to_thread=True, guards=READERS)
def outcomes(request: Request[Any, Any, Any], state: State, code: str | None = None) -> Template:
    with session_scope(state.engine) as session:
        return OUTCOMES.page(request, session, _in_force(session), code)


@_edit("/outcomes/new")
def new_outcome(request: Request[Any, Any, Any], state: State, data: Form) -> Template:
    return _edited(request, state, data, OUTCOMES, None)


@_edit("/outcomes/{code:str}")
def change_outcome(
    request: Request[Any, Any, Any], state: State, code: str, data: Form
) -> Template:
    return _edited(request, state, data, OUTCOMES, code)


# Plans -----------------------------------------------------------------------------------------


def _plans_context(current: InForce, selected: str | None) -> dict[str, Any]:
    document = current.document
    return {
        "rows": document.get("plans", []),
        "selected": entry(document, "plans", "id", selected) if selected else None,
        "system_outcomes": [
            row for row in document.get("outcomes", []) if row.get("kind") == "system"
        ],
        "weekdays": WEEKDAYS,
    }


def _edit_plan(current: InForce, plan_id: str | None, form: Mapping[str, str]) -> dict[str, Any]:
    assert plan_id is not None, "no new plan: a plan is added to the rules file"
    return edit_plan(current.document, plan_id, form)


PLANS = _Entries("plans", "/console/plans", "plan", "plan", _plans_context, _edit_plan)


@get("/plans", sync_to_thread=True, guards=READERS)
def plans(request: Request[Any, Any, Any], state: State, plan: str | None = None) -> Template:
    with session_scope(state.engine) as session:
        return PLANS.page(request, session, _in_force(session), plan)


@_edit("/plans/{plan_id:str}")
def change_plan(
    request: Request[Any, Any, Any], state: State, plan_id: str, data: Form
) -> Template:
    return _edited(request, state, data, PLANS, plan_id)


# The preview and the save ----------------------------------------------------------------------


def _days(text: str | None) -> int:
    try:
        days = int(text or PREVIEW_DAYS)
    except ValueError:
        return PREVIEW_DAYS
    return min(max(days, 1), MAX_DAYS)


def _propose(
    request: Request[Any, Any, Any],
    session: Session,
    current: InForce,
    document: Mapping[str, Any],
    *,
    back: str,
    days: int = PREVIEW_DAYS,
) -> Template:
    return _preview(request, session, current, proposed_text(document), back=back, days=days)


def _preview(
    request: Request[Any, Any, Any],
    session: Session,
    current: InForce,
    text: str,
    *,
    back: str,
    days: int,
    notice: str | None = None,
    comment: str = "",
) -> Template:
    """The preview page of the rules file ``text`` against the rules in force, or, when ``text``
    does not load, the error (422) with a way back."""
    try:
        proposed = rules_from_text(text, EDIT_NAME)
    except RulesError as error:
        return _page(
            request, session, "refused", status_code=HTTP_422_UNPROCESSABLE_ENTITY,
            error=str(error), back=back,
        )  # fmt: skip
    changes = diff_exports(current.text, proposed.export_text())
    what_if = preview_rules(session, proposed, current.rules, days=days, now=datetime.now(UTC))
    return _page(
        request,
        session,
        "preview",
        text=text,
        based_on=current.version,
        proposed_version=proposed.version,
        changes=changes,
        what_if=what_if,
        figures=_figures(what_if),
        days=days,
        back=back,
        notice=notice,
        comment=comment,
    )


def _figures(what_if: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """The two summaries side by side: (label, in force, proposed)."""
    now, then = what_if["summary"], what_if["compare"]["summary"]
    rows: list[tuple[str, Any, Any]] = [
        ("call results", now["events"], then["events"]),
        ("recalls fired", now["recalls_fired"], then["recalls_fired"]),
        ("recalls pending", now["recalls_pending"], then["recalls_pending"]),
        (
            "median recall delay (s)",
            now["recall_delay_s"]["median"],
            then["recall_delay_s"]["median"],
        ),
        ("p95 recall delay (s)", now["recall_delay_s"]["p95"], then["recall_delay_s"]["p95"]),
    ]
    for group in ("actions", "reasons"):
        names = [*now[group], *(name for name in then[group] if name not in now[group])]
        rows += [(f"{group[:-1]}: {name}", now[group].get(name, 0), then[group].get(name, 0))
                 for name in names]  # fmt: skip
    return rows


@_edit("/preview")
def preview_again(request: Request[Any, Any, Any], state: State, data: Form) -> Template:
    """The same proposed rules previewed again (another number of days)."""
    with session_scope(state.engine) as session:
        current = _in_force(session)
        return _preview(
            request, session, current, data.get("text", ""), back=data.get("back", "/console"),
            days=_days(data.get("days")), comment=data.get("comment", ""),
        )  # fmt: skip


@_edit("/save")
def save(request: Request[Any, Any, Any], state: State, data: Form) -> Template | Redirect:
    """Store the previewed rules as a new version, if the version they were based on is still in
    force; else the preview again, against the version in force now."""
    who = user(request)
    assert who is not None, "guarded"
    text, comment = data.get("text", ""), " ".join(data.get("comment", "").split())
    back, days = data.get("back", "/console"), _days(data.get("days"))
    with session_scope(state.engine) as session:
        current = _in_force(session)
        if data.get("based_on") != current.version:
            return _preview(
                request, session, current, text, back=back, days=days, comment=comment,
                notice=f"The rules in force changed meanwhile (now version {current.version}):"
                " review this preview again before saving.",
            )  # fmt: skip
        if not comment:
            return _preview(
                request, session, current, text, back=back, days=days,
                notice="Write a comment: it is kept with the version, saying why.",
            )  # fmt: skip
        try:
            put_rules(
                session, text, author=who.name, comment=comment, now=datetime.now(UTC),
                via="console",
            )  # fmt: skip
        except RulesError as error:
            return _page(
                request, session, "refused", status_code=HTTP_422_UNPROCESSABLE_ENTITY,
                error=str(error), back=back,
            )  # fmt: skip
    return Redirect("/console/rules")


# Rules history, a phone, dead letters -----------------------------------------------------------


@get("/rules", sync_to_thread=True, guards=READERS)
def history(request: Request[Any, Any, Any], state: State) -> Template:
    with session_scope(state.engine) as session:
        rows = rules_history(session)
        versions = [
            {
                "row": row,
                "changes": diff_exports(rows[index + 1].rules, row.rules)
                if index + 1 < len(rows)
                else None,
            }
            for index, row in enumerate(rows)
        ]
        return _page(request, session, "rules", versions=versions)


@get("/phones", sync_to_thread=True, guards=READERS)
def phone_history(
    request: Request[Any, Any, Any], state: State, phone_id: str | None = None
) -> Template:
    with session_scope(state.engine) as session:
        found = phone(session, phone_id) if phone_id else None
        events = (
            session.scalars(
                select(ProcessedEvent)
                .where(ProcessedEvent.phone_id == phone_id)
                .order_by(ProcessedEvent.occurred_at, ProcessedEvent.event_id)
            ).all()
            if phone_id
            else []
        )
        return _page(
            request, session, "phones", phone_id=phone_id or "", phone=found, events=events
        )


@get("/dead-letters", sync_to_thread=True, guards=READERS)
def letters(
    request: Request[Any, Any, Any], state: State, include_replayed: bool = False
) -> Template:
    with session_scope(state.engine) as session:
        rows = dead_letters(session, include_replayed=include_replayed, limit=1000)
        return _page(
            request, session, "dead_letters", rows=rows, include_replayed=include_replayed,
            result=None,
        )  # fmt: skip


@_edit("/dead-letters/replay")
def replay_letters(request: Request[Any, Any, Any], state: State, data: Form) -> Template:
    """Replay the dead letters (one, ``id``, or every new one) through the rules in force."""
    ids = [int(data["id"])] if data.get("id", "").isdigit() else []
    rules = rules_now(state)  # as the API's replay: the version in force, read only
    with session_scope(state.engine) as session:
        result = replay_dead_letters_in_force(
            session, rules, datetime.now(UTC), ids, skew_s=state.settings.clock_skew_s
        )
    with session_scope(state.engine) as session:
        rows = dead_letters(session, include_replayed=False, limit=1000)
        return _page(
            request, session, "dead_letters", rows=rows, include_replayed=False, result=result
        )


router = Router(
    "/",
    route_handlers=[
        home,
        login_form,
        login,
        logout,
        sip_codes,
        new_sip_code,
        change_sip_code,
        outcomes,
        new_outcome,
        change_outcome,
        plans,
        change_plan,
        preview_again,
        save,
        history,
        phone_history,
        letters,
        replay_letters,
    ],
    include_in_schema=False,
)
