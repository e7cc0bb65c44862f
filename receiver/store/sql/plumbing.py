"""How a shared store operation is spelled and run: its steps (:class:`Query`, :class:`Lock`), and a
backend's :class:`SqlDialect`, which compiles the statements (placeholders, locking tokens, DDL types)."""

from __future__ import annotations

import re
from collections.abc import Generator, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

__all__ = ["Lock", "Op", "Query", "SqlDialect", "Step", "UniqueViolation", "compile_statement", "marks"]


T = TypeVar("T")


@dataclass(frozen=True)
class Query:
    sql: str
    args: tuple[Any, ...] = ()
    #: "count": rows changed; "one": first row or None; "all": rows; "many": run once per row of `args`
    #: (a tuple of tuples), answering None on every backend (PostgreSQL's executemany counts nothing).
    want: Literal["count", "one", "all", "many"] = "count"


@dataclass(frozen=True)
class Lock:
    """Serialise this transaction with every other one taking the same named lock (PostgreSQL's
    advisory locks; SQLite's write transactions are serial already)."""

    name: str


class UniqueViolation(Exception):
    """A backend's unique-constraint error, thrown back into the operation that caused it."""


Step = Query | Lock


Op = Generator[Step, Any, T]


@dataclass(frozen=True)
class SqlDialect:
    name: str
    #: Placeholder for the n-th parameter (1-based): "?" or "$n".
    placeholder: str = "?"
    #: Row locking for claim subqueries ("" where writers are serial anyway).
    skip_locked: str = ""
    #: Locking the row a transaction reads before it writes it (READ COMMITTED would let another
    #: transaction commit in between); "" where writers are serial anyway.
    for_update: str = ""
    #: How a claim names the rows its subquery picked: `id IN (…)`, or on PostgreSQL
    #: `id = ANY(ARRAY(…))`, whose generic plan still looks rows up by key (an `IN` subquery's
    #: generic plan, estimated without the parameters, is a full scan and hash join).
    ids_in: tuple[str, str] = ("id IN (", ")")
    #: DDL spellings that differ from SQLite's: (SQLite's, ours) pairs.
    types: tuple[tuple[str, str], ...] = ()
    #: `{json_text:COLUMN:KEY}`: the string at KEY of the JSON object in COLUMN, NULL if it is not a string.
    json_text: str = "CASE WHEN json_type({doc}, '$.{key}') = 'text' THEN json_extract({doc}, '$.{key}') END"
    #: Statements compiled so far (a few dozen: they are this module's literals; bounded all the same).
    _compiled: dict[str, str] = field(default_factory=dict, init=False, repr=False, compare=False, hash=False)

    def compile(self, sql: str) -> str:
        compiled = self._compiled.get(sql)
        if compiled is None:
            compiled = compile_statement(self, sql)
            if len(self._compiled) < 1024:
                self._compiled[sql] = compiled
        return compiled

    def ddl(self, sql: str) -> str:
        for old, new in self.types:
            sql = re.sub(rf"\b{re.escape(old)}\b", new, sql)
        return sql


_JSON_TEXT = re.compile(r"\{json_text:(\w+):(\w+)\}")

#: What `?` may sit inside without being a parameter: string literals, quoted names, comments.
_TOKENS = re.compile(r"'[^']*'|\"[^\"]*\"|--[^\n]*|/\*.*?\*/|\?", re.DOTALL)


def compile_statement(dialect: SqlDialect, sql: str) -> str:
    """`sql` in `dialect`: its tokens replaced (`{json_text:COLUMN:KEY}` too), and each `?` that is a
    parameter (not one inside a string literal, a quoted name or a comment) numbered as the dialect's
    placeholder."""
    sql = sql.replace("{skip_locked}", dialect.skip_locked).replace("{for_update}", dialect.for_update)
    sql = sql.replace("{ids_in}", dialect.ids_in[0]).replace("{ids_end}", dialect.ids_in[1])
    sql = _JSON_TEXT.sub(lambda m: dialect.json_text.format(doc=m[1], key=m[2]), sql)
    if dialect.placeholder == "?":
        return sql
    counter = iter(range(1, 10_000))

    def number(match: re.Match[str]) -> str:
        found = match.group()
        return dialect.placeholder.replace("n", str(next(counter))) if found == "?" else found

    return _TOKENS.sub(number, sql)


def marks(values: Iterable[Any]) -> str:
    """One `?` per value, comma-separated (NULL for none: `IN (NULL)` matches nothing)."""
    return ",".join("?" for _ in values) or "NULL"
