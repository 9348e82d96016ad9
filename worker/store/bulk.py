"""Bulk SQL: many rows in a fixed handful of statements, on PostgreSQL and SQLite alike.

Binary COPY and ``unnest`` arrays on PostgreSQL, executemany on SQLite; ``where_in`` conditions
that carry any number of ids. Every caller passes an open session: it owns the transaction.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import cache
from typing import Any, TypeVar

import orjson
from psycopg import sql
from psycopg.types.json import set_json_dumps
from sqlalchemy import (
    JSON,
    String,
    any_,
    bindparam,
    insert,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from worker.store.models import Base

__all__ = ["CHUNK", "COPY_FROM_ROWS", "chunks"]


T = TypeVar("T")


# Below this many rows a COPY's set-up costs more than it saves.
COPY_FROM_ROWS = 50


# Bind-parameter lists stay well under PostgreSQL's 65,535 and SQLite's 32,766 limits.
CHUNK = 2000


def chunks(items: Sequence[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def where_in(session: Session, column: Any, values: Sequence[str]) -> Iterator[Any]:
    """Conditions ``column IN values`` covering ``values``, as few statements as can carry them.

    PostgreSQL takes the whole list as one array parameter (``= ANY``): one statement, and no
    per-value placeholders to render and bind; SQLite gets ``IN`` lists of ``CHUNK`` values.
    """
    if session.get_bind().dialect.name == "postgresql":
        if values:
            yield column == any_(bindparam(None, list(values), type_=postgresql.ARRAY(String)))
        return
    for part in chunks(values):
        yield column.in_(part)


def copying(session: Session, rows: Sequence[object]) -> bool:
    """Whether ``rows`` go through COPY: on PostgreSQL, from ``COPY_FROM_ROWS`` rows."""
    return len(rows) >= COPY_FROM_ROWS and session.get_bind().dialect.name == "postgresql"


def dbapi(session: Session) -> Any:
    """The psycopg connection under ``session``'s transaction (for COPY and array statements)."""
    return session.connection().connection.dbapi_connection


@cache
def pg_type(table: str, name: str) -> str:
    """The PostgreSQL type of the column ``table.name``, as a cast or COPY can name it."""
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    return str(Base.metadata.tables[table].c[name].type.compile(dialect=dialect))


def insert_rows(
    session: Session, model: type[Any], names: Sequence[str], rows: Sequence[Sequence[Any]]
) -> None:
    """Insert ``rows`` (tuples of the columns ``names`` of ``model``) in bulk.

    PostgreSQL gets one binary COPY per table, inside the transaction: an order of magnitude
    faster than executemany, which handles parameters row by row, and binary spares the server
    parsing every timestamp from text. SQLite's executemany is already fast.
    """
    if not rows:
        return
    if not copying(session, rows):
        session.execute(insert(model), [dict(zip(names, row, strict=True)) for row in rows])
        return
    columns = ", ".join(f'"{name}"' for name in names)
    # Binary COPY wants each column's own type: "varchar(255)" names the array-less base.
    types = [pg_type(model.__table__.name, name).split("(")[0].lower() for name in names]
    with (
        dbapi(session).cursor() as cursor,
        cursor.copy(f"COPY {model.__table__.name} ({columns}) FROM STDIN (FORMAT BINARY)") as copy,
    ):
        set_json_dumps(orjson.dumps, cursor)  # the text the SQLAlchemy engines write too
        copy.set_types(types)
        for row in rows:
            copy.write_row(row)


def unnest(
    model: type[Any], names: Sequence[str], rows: Sequence[Sequence[Any]]
) -> tuple[sql.Composable, list[Any]]:
    """``unnest(...) AS v(names)`` over one array parameter per column, and those arrays.

    One statement with a handful of parameters carries any number of rows: no per-row
    placeholders, no staging table. The arrays go in binary (``%b``): psycopg's text form of an
    array escapes every element with a regular expression, ten times the cost.
    """
    table = model.__table__.name
    arrays = sql.SQL(", ".join(f"%b::{pg_type(table, name)}[]" for name in names))
    columns = sql.SQL(", ").join(map(sql.Identifier, names))
    source = sql.SQL("unnest({}) AS v({})").format(arrays, columns)
    values: list[Any] = []
    for index, name in enumerate(names):
        column = [row[index] for row in rows]
        if isinstance(model.__table__.c[name].type, JSON):
            column = [None if value is None else orjson.dumps(value).decode() for value in column]
        values.append(column)
    return source, values


def update_rows(
    session: Session, model: type[Any], names: Sequence[str], rows: Sequence[Sequence[Any]]
) -> None:
    """Write ``rows`` (tuples of the columns ``names``, the primary key first) over their rows."""
    if not rows:
        return
    if session.get_bind().dialect.name != "postgresql":
        session.execute(update(model), [dict(zip(names, row, strict=True)) for row in rows])
        return
    source, values = unnest(model, names, rows)
    table, key = sql.Identifier(model.__table__.name), sql.Identifier(names[0])
    template = sql.SQL(
        "UPDATE {table} SET {assignments} FROM {source} WHERE {table}.{key} = v.{key}"
    )
    assignments = sql.SQL(", ").join(
        sql.SQL("{} = v.{}").format(sql.Identifier(name), sql.Identifier(name))
        for name in names[1:]
    )
    with dbapi(session).cursor() as cursor:
        statement = template.format(table=table, assignments=assignments, source=source, key=key)
        cursor.execute(statement, values)
