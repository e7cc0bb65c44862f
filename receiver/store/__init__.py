"""The ledger: jobs, received events and result files.

:class:`Store` is the interface every backend implements; the contract tests
in ``tests/receiver/store/test_store.py`` run against each one. Status changes are
conditional updates derived from :mod:`submitter.status`, deduplication is a
unique key, and work is claimed with leases, so several processes can share
one database without doing anything twice.

The names live in submodules (records and errors in :mod:`receiver.store.models`, the interface
in :mod:`receiver.store.protocol`, backend choice in :mod:`receiver.store.backends`); they are
re-exported here for callers. No module of this package imports the package itself.
"""

from __future__ import annotations

from receiver.store.backends import is_postgres_url, open_store, schema_behind
from receiver.store.models import (
    AttemptRecord,
    Delivery,
    Event,
    FileRecord,
    IdempotencyConflict,
    Job,
    OutboxEvent,
    Outcome,
    SinkState,
    StoreUnavailable,
    TaskMismatch,
    iso,
)
from receiver.store.protocol import Store
from receiver.store.summary import JobSummary, ProviderHour, ProviderStats

__all__ = [
    "AttemptRecord",
    "Delivery",
    "Event",
    "FileRecord",
    "IdempotencyConflict",
    "Job",
    "JobSummary",
    "OutboxEvent",
    "Outcome",
    "ProviderHour",
    "ProviderStats",
    "SinkState",
    "Store",
    "StoreUnavailable",
    "TaskMismatch",
    "is_postgres_url",
    "iso",
    "open_store",
    "schema_behind",
]
