"""`fluxhook migrate`: the ledger's schema migrations, applied or (--check) only looked at."""

from __future__ import annotations

import argparse

from receiver.cli.ledger import local_only
from receiver.config.settings import Settings
from receiver.store import open_store, schema_behind
from receiver.store.sql import LATEST

__all__ = ["migrate"]


async def migrate(args: argparse.Namespace, settings: Settings) -> int:
    local_only(settings, "migrate", "migrations change the database's schema")
    store = open_store(settings.db_to_open(), pool_size=1)
    await store.open(migrate=False)
    try:
        before, versions = await store.migrate(apply=not args.check)
    finally:
        await store.close()
    where = settings.db_display
    if args.check:
        if versions:
            print(schema_behind(where, before, versions))
            return 1
        print(f"{where}: schema version {before}, current")
        return 0
    if versions:
        print(f"{where}: schema version {LATEST} (applied {', '.join(map(str, versions))})")
    else:
        print(f"{where}: schema version {LATEST}, already current")
    return 0
