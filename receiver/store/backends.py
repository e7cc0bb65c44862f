"""Choosing a backend from FLUXHOOK_DB, and what to say when its schema is behind."""

from __future__ import annotations

from receiver.store.protocol import Store
from receiver.store.sqlite import SQLiteStore

__all__ = ["is_postgres_url", "open_store", "schema_behind"]


def schema_behind(where: str, before: int, pending: list[int]) -> str:
    """What to tell someone whose database at `where` still has migrations `pending`."""
    return (f"{where}: schema version {before}, {len(pending)} migration(s) pending"
            f" ({', '.join(map(str, pending))}): run `fluxhook migrate`")


def is_postgres_url(db: str) -> bool:
    """Whether FLUXHOOK_DB names a PostgreSQL database (else it is a SQLite file)."""
    return db.startswith(("postgresql://", "postgres://"))


def open_store(db: str, *, pool_size: int = 10) -> Store:
    """The backend `db` names (not yet opened): PostgreSQL for a postgresql:// or postgres:// URL,
    else a SQLite file at that path."""
    if is_postgres_url(db):
        # Deferred for cold start: the callback path never loads the PostgreSQL backend
        # (tests/test_cold_imports.py).
        from receiver.store.postgres import PostgresStore

        return PostgresStore(db, pool_size=pool_size)
    return SQLiteStore(db)
