"""The ledger's schema: numbered migrations, each run once, in a transaction with its record."""

from __future__ import annotations

from receiver.store.sql.plumbing import Lock, Op, Query, SqlDialect

__all__ = ["LATEST", "MIGRATIONS", "MIGRATIONS_TABLE", "migrate"]


#: Numbered schema steps; each runs once, in a transaction with its record. Written in SQLite's
#: types; :meth:`SqlDialect.ddl` renames the few that differ.
MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "initial",
        """
        CREATE TABLE jobs (
            id TEXT PRIMARY KEY,
            provider TEXT NOT NULL,
            model TEXT NOT NULL,
            params TEXT NOT NULL,
            status TEXT NOT NULL,
            created_at REAL NOT NULL,
            deadline_at REAL NOT NULL,
            provider_job_id TEXT,
            polling_url TEXT,
            submitted_at REAL,
            updated_at REAL,
            next_check_at REAL,
            download_by REAL,
            callback_at REAL,
            polls INTEGER NOT NULL DEFAULT 0,
            submit_attempts INTEGER NOT NULL DEFAULT 0,
            repolls INTEGER NOT NULL DEFAULT 0,
            slot_held INTEGER NOT NULL DEFAULT 0,
            progress REAL,
            error TEXT,
            note TEXT,
            lease_owner TEXT,
            lease_until REAL
        );
        CREATE INDEX jobs_due ON jobs (next_check_at) WHERE next_check_at IS NOT NULL;
        CREATE INDEX jobs_active ON jobs (provider, status);
        CREATE UNIQUE INDEX jobs_provider_job ON jobs (provider, provider_job_id)
            WHERE provider_job_id IS NOT NULL;
        CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            job_id TEXT NOT NULL,
            provider TEXT NOT NULL,
            dedup_key TEXT NOT NULL UNIQUE,
            received_at REAL NOT NULL,
            headers TEXT NOT NULL,
            body BLOB NOT NULL,
            verdict TEXT NOT NULL
        );
        CREATE INDEX events_job ON events (job_id);
        CREATE TABLE files (
            job_id TEXT NOT NULL,
            n INTEGER NOT NULL,
            url TEXT NOT NULL,
            expires_at REAL NOT NULL,
            path TEXT,
            size INTEGER,
            sha256 TEXT,
            content_type TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (job_id, n)
        );
        """,
    ),
    (
        2,
        "submit options, progress logs and outputs",
        """
        ALTER TABLE jobs ADD COLUMN options TEXT NOT NULL DEFAULT '{}';
        ALTER TABLE jobs ADD COLUMN logs TEXT;
        ALTER TABLE jobs ADD COLUMN outputs TEXT
        """,
    ),
    (3, "events by age, for retention", "CREATE INDEX events_received ON events (received_at)"),
    (4, "submit requests in flight", "ALTER TABLE jobs ADD COLUMN sending INTEGER NOT NULL DEFAULT 0"),
    (
        5,
        "event outbox, sinks, deliveries, idempotency keys, job metadata",
        """
        ALTER TABLE jobs ADD COLUMN metadata TEXT NOT NULL DEFAULT '{}';
        CREATE INDEX jobs_created ON jobs (created_at, id);
        CREATE TABLE outbox (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            job_id TEXT NOT NULL,
            type TEXT NOT NULL,
            created_at REAL NOT NULL,
            data TEXT NOT NULL
        );
        CREATE INDEX outbox_job ON outbox (job_id, seq);
        CREATE INDEX outbox_created ON outbox (created_at);
        CREATE TABLE sinks (
            name TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            display TEXT NOT NULL,
            after_seq BIGINT NOT NULL,
            created_at REAL NOT NULL,
            disabled_at REAL,
            disabled_reason TEXT
        );
        CREATE TABLE deliveries (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            sink TEXT NOT NULL,
            seq BIGINT NOT NULL,
            job_id TEXT NOT NULL,
            state TEXT NOT NULL DEFAULT 'pending',
            attempts INTEGER NOT NULL DEFAULT 0,
            next_at REAL,
            created_at REAL NOT NULL,
            delivered_at REAL,
            last_code INTEGER,
            last_error TEXT,
            lease_owner TEXT,
            lease_until REAL,
            UNIQUE (sink, seq)
        );
        CREATE INDEX deliveries_due ON deliveries (next_at) WHERE state = 'pending';
        CREATE INDEX deliveries_order ON deliveries (sink, job_id, seq) WHERE state = 'pending';
        CREATE INDEX deliveries_seq ON deliveries (seq);
        CREATE TABLE delivery_attempts (
            delivery_id BIGINT NOT NULL,
            seq BIGINT NOT NULL,
            at REAL NOT NULL,
            code INTEGER,
            latency_ms REAL NOT NULL,
            error TEXT
        );
        CREATE INDEX delivery_attempts_delivery ON delivery_attempts (delivery_id);
        CREATE INDEX delivery_attempts_seq ON delivery_attempts (seq);
        CREATE TABLE idempotency (
            key TEXT PRIMARY KEY,
            fingerprint TEXT NOT NULL,
            job_id TEXT NOT NULL,
            created_at REAL NOT NULL
        );
        CREATE INDEX idempotency_created ON idempotency (created_at)
        """,
    ),
    (
        6,
        "the API key that created each job, and ended UI sessions",
        """
        ALTER TABLE jobs ADD COLUMN created_by TEXT;
        CREATE INDEX jobs_created_by ON jobs (created_by, created_at, id) WHERE created_by IS NOT NULL;
        ALTER TABLE outbox ADD COLUMN created_by TEXT;
        CREATE TABLE ended_sessions (
            digest TEXT PRIMARY KEY,
            expires_at REAL NOT NULL
        );
        CREATE INDEX ended_sessions_expiry ON ended_sessions (expires_at)
        """,
    ),
    (
        7,
        "large inputs stored once, by sha256, beside the job",
        """
        CREATE TABLE inputs (
            sha256 TEXT PRIMARY KEY,
            size INTEGER NOT NULL,
            type TEXT NOT NULL,
            data TEXT NOT NULL,
            created_at REAL NOT NULL
        );
        CREATE TABLE job_inputs (
            job_id TEXT NOT NULL,
            path TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            PRIMARY KEY (job_id, path)
        );
        CREATE INDEX job_inputs_sha256 ON job_inputs (sha256)
        """,
    ),
]


LATEST = MIGRATIONS[-1][0]


MIGRATIONS_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_migrations "
    "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
)


def migrate(dialect: SqlDialect, now: float, *, apply: bool = True) -> Op[tuple[int, list[int]]]:
    """Bring the schema up to date (or, without `apply`, only look): (version before, versions applied)."""
    yield Lock("fluxhook-migrate")
    yield Query(dialect.ddl(MIGRATIONS_TABLE))
    done = {row[0] for row in (yield Query("SELECT version FROM schema_migrations", want="all"))}
    before = max(done, default=0)
    pending = [m for m in MIGRATIONS if m[0] not in done]
    if not apply:
        return before, [v for v, _, _ in pending]
    for version, name, sql in pending:
        for statement in filter(str.strip, dialect.ddl(sql).split(";")):
            yield Query(statement)
        yield Query("INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (version, name, now))
    return before, [v for v, _, _ in pending]
