"""PostgreSQL for tests: the server at FLUXHOOK_TEST_PG (default: the local one, trust auth, database
`test`), each test in a schema of its own so tests never see each other's rows. A missing server is an
error, never a skip: `.ci/run` starts it."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator

import asyncpg

PG_URL = os.environ.get("FLUXHOOK_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def with_schema(url: str, schema: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}search_path={schema}"


@contextlib.asynccontextmanager
async def fresh_schema() -> AsyncIterator[str]:
    """A new empty schema; yields a database URL whose connections use it, and drops it afterwards."""
    schema = "fh_test_" + uuid.uuid4().hex[:12]
    try:
        admin = await asyncpg.connect(PG_URL, timeout=10)
    except (OSError, asyncpg.PostgresError) as exc:
        raise RuntimeError(
            f"PostgreSQL is needed for this test and did not answer at {PG_URL} ({exc}); start it with "
            "`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` or set FLUXHOOK_TEST_PG"
        ) from exc
    try:
        await admin.execute(f'CREATE SCHEMA "{schema}"')
        yield with_schema(PG_URL, schema)
    finally:
        await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await admin.close()
