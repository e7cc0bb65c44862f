"""PostgreSQL for real: several stores (as several replicas would hold) on one schema, conflicting
writes at the same moment, concurrent migrations, an outage and the recovery after it."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from receiver.cli.main import main as cli_main
from receiver.config.settings import Settings
from receiver.store import Event, StoreUnavailable, open_store
from receiver.store.postgres import PostgresStore
from receiver.store.sql import LATEST, MIGRATIONS
from submitter.status import Status
from submitter.urls import masked_url
from tests import ledger
from tests.harness import harness
from tests.pg import fresh_schema
from tests.receiver.store.test_store import NOW, job, obs
from tests.receiver.web.test_app import a_job, post

pytestmark = pytest.mark.anyio
REPLICAS = 3


@contextlib.asynccontextmanager
async def replicas(n: int = REPLICAS) -> AsyncIterator[list[PostgresStore]]:
    """`n` stores with pools of their own on one fresh schema, opened at the same time."""
    async with fresh_schema() as url:
        stores = [PostgresStore(url, pool_size=4) for _ in range(n)]
        await asyncio.gather(*(s.open() for s in stores))  # concurrent migrations on an empty schema
        try:
            yield stores
        finally:
            await asyncio.gather(*(s.close() for s in stores))


async def test_replicas_opening_at_once_migrate_once() -> None:
    async with replicas(4) as stores:
        admin = await asyncpg.connect(stores[0].url)
        try:
            rows = await admin.fetch("SELECT version, name FROM schema_migrations ORDER BY version")
        finally:
            await admin.close()
        assert [(r["version"], r["name"]) for r in rows] == [(v, n) for v, n, _ in MIGRATIONS]
        assert await stores[1].migrate(apply=False) == (LATEST, [])


async def test_conflicting_reports_at_the_same_moment_end_in_one_legal_state() -> None:
    async with replicas() as stores:
        a, b, c = stores
        for i in range(30):
            await a.create_job(job(f"j{i}"))
            await a.record_submit(f"j{i}", f"p{i}", None, now=NOW, next_check_at=NOW + 60)
        for i in range(30):
            ok = obs(Status.SUCCEEDED, (f"https://r/{i}.png",), provider_job_id=f"p{i}")
            bad = obs(Status.FAILED, provider_job_id=f"p{i}")
            late = obs(Status.RUNNING, provider_job_id=f"p{i}")
            results = await asyncio.gather(
                a.apply(f"j{i}", ok, now=NOW, next_check_at=NOW, expires=(NOW + 600,)),
                b.apply(f"j{i}", bad, now=NOW, next_check_at=NOW),
                c.apply(f"j{i}", late, now=NOW, next_check_at=NOW),
            )
            final = await a.get_job(f"j{i}")
            assert final is not None and final.status in (Status.SUCCEEDED, Status.FAILED)
            files = await a.files(f"j{i}")
            # Whichever came first wins, and the other never half-applies.
            assert (final.status == Status.SUCCEEDED) == bool(files)
            assert sum(r.changed and r.status in (Status.SUCCEEDED, Status.FAILED) for r in results) == 1


async def test_claims_across_replicas_never_overlap_and_lapse_to_another() -> None:
    async with replicas() as stores:
        for i in range(60):
            await stores[0].create_job(job(f"j{i}"))
        batches = await asyncio.gather(*(
            s.claim_due(f"replica{n}-{k}", now=NOW, lease=60, limit=9) for n, s in enumerate(stores) for k in range(3)
        ))
        ids = [j.id for batch in batches for j in batch]
        assert len(ids) == len(set(ids)) == 60
        assert await stores[1].claim_due("late", now=NOW + 30, lease=60, limit=100) == []
        # The holder died: its leases lapse and another replica takes every job.
        assert len(await stores[2].claim_due("survivor", now=NOW + 61, lease=60, limit=100)) == 60


async def test_the_concurrency_cap_holds_across_replicas() -> None:
    async with replicas() as stores:
        for i in range(30):
            await stores[0].create_job(job(f"j{i}"))
        held = await asyncio.gather(*(
            stores[i % REPLICAS].reserve_slot(f"j{i}", cap=7, model_cap=24, now=NOW) for i in range(30)
        ))
        assert sum(held) == 7


async def test_dedup_across_replicas_is_one_unique_key() -> None:
    async with replicas() as stores:
        await stores[0].create_job(job())
        await stores[0].record_submit("j1", "p1", None, now=NOW, next_check_at=NOW + 60)

        def event() -> Event:
            return Event(job_id="j1", provider="bfl", dedup_key="bfl/j1/id:msg", received_at=NOW,
                         headers={}, body=b"{}", verdict="accepted:token")

        outcomes = await asyncio.gather(*(
            s.apply("j1", obs(Status.RUNNING), now=NOW, next_check_at=NOW + 60, event=event())
            for s in stores for _ in range(4)
        ))
        assert sum(not o.duplicate for o in outcomes) == 1
        assert await ledger.count_events(stores[0], "j1") == 1


class Cuttable:
    """A TCP forwarder to PostgreSQL that the test can cut and restore: an outage, for real."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.server: asyncio.Server | None = None
        self.port = 0
        self.links: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._link, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self.links):
            writer.transport.abort()
        await self.server.wait_closed()

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self.links |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self.links -= {writer, up_writer}


async def test_an_outage_is_503_to_callbacks_and_the_receiver_recovers_by_itself(tmp_path: Path) -> None:
    async with fresh_schema() as url:
        proxy = Cuttable(5432)
        await proxy.start()
        proxied = url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
        assert proxied != url
        store = PostgresStore(proxied, pool_size=2, timeout=2.0)
        await store.open()
        try:
            async with harness(tmp_path, store=store) as h:
                job_id = await a_job(h)
                pid = (await h.rt.store.get_job(job_id)).provider_job_id  # type: ignore[union-attr]
                body = json.dumps({"id": pid, "status": "Pending"}).encode()
                assert (await post(h, "bfl", job_id, body)).status_code == 200
                await proxy.cut()  # the database goes away (connections die, new ones are refused)
                down = await post(h, "bfl", job_id, json.dumps({"id": pid, "status": "Pending", "p": 1}).encode())
                assert down.status_code == 503 and down.headers["retry-after"]
                with pytest.raises(StoreUnavailable):
                    await h.rt.store.get_job(job_id)
                await proxy.start()  # ...and comes back on the same address
                again = await post(h, "bfl", job_id, json.dumps({"id": pid, "status": "Pending", "p": 1}).encode())
                assert again.status_code == 200, again.text
                assert await ledger.count_events(h.rt.store, job_id) == 2
        finally:
            await store.close()
            await proxy.cut()


async def test_migrate_command_on_postgres(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    async with fresh_schema() as url:
        secret_url = url.replace("postgres@", "postgres:hunter2-secret@")
        monkeypatch.setenv("FLUXHOOK_DB", secret_url)
        assert await asyncio.to_thread(cli_main, ["migrate", "--check"]) == 1
        assert await asyncio.to_thread(cli_main, ["migrate"]) == 0
        assert await asyncio.to_thread(cli_main, ["migrate"]) == 0
        assert await asyncio.to_thread(cli_main, ["migrate", "--check"]) == 0
        out = capsys.readouterr().out
        versions = ", ".join(str(v) for v, _, _ in MIGRATIONS)  # every migration, by number
        assert f"pending ({versions})" in out and f"schema version {LATEST} (applied {versions})" in out
        assert "already current" in out and "current" in out
        assert "hunter2-secret" not in out and "postgres:***@" in out
        monkeypatch.setenv("FLUXHOOK_DB", "postgresql://postgres:hunter2-secret@127.0.0.1:1/test")
        assert await asyncio.to_thread(cli_main, ["migrate"]) == 1
        err = capsys.readouterr().err
        assert "cannot open the database" in err and "hunter2-secret" not in err


def test_database_urls_select_the_backend_and_hide_the_password() -> None:
    assert isinstance(open_store("postgresql://u@h/db"), PostgresStore)
    assert isinstance(open_store("postgres://u@h/db"), PostgresStore)
    assert not isinstance(open_store("./fluxhook.db"), PostgresStore)
    assert masked_url("postgresql://u:pw@h:5433/db?search_path=x") == "postgresql://u:***@h:5433/db?search_path=x"
    assert masked_url("postgresql://u@h/db") == "postgresql://u@h/db"
    assert masked_url("postgresql://u@h/db?password=hunter2&x=1") == "postgresql://u@h/db?password=***&x=1"
    assert masked_url("postgresql://u:pw@h1:5432,h2:5433/db") == "postgresql://u:***@h1:5432,h2:5433/db"
    assert masked_url("postgresql://u:p@ss@[::1]:5432/db") == "postgresql://u:***@[::1]:5432/db"
    settings = Settings.from_env({"FLUXHOOK_DB": "postgresql://u:pw@h/db", "FLUXHOOK_DB_POOL": "3"})
    assert settings.db_pool == 3 and "pw" not in repr(settings) and settings.db_display == "postgresql://u:***@h/db"


async def test_a_database_out_of_connections_is_503_not_500(tmp_path: Path) -> None:
    """A role allowed one connection, and that one taken: `too many connections` (SQLSTATE 53300)."""
    async with fresh_schema() as url:
        role = "fh_limited_" + url.rsplit("fh_test_", 1)[1]
        admin = await asyncpg.connect(url)
        await admin.execute(f'CREATE ROLE "{role}" LOGIN CONNECTION LIMIT 1')
        schema = url.rsplit("search_path=", 1)[1]
        await admin.execute(f'GRANT ALL ON SCHEMA "{schema}" TO "{role}"')
        limited = url.replace("postgres@", f"{role}@")
        store = PostgresStore(limited, pool_size=1, timeout=2.0)
        await store.open()
        try:
            async with harness(tmp_path, store=store) as h:
                job_id = await a_job(h)
                pid = (await h.rt.store.get_job(job_id)).provider_job_id  # type: ignore[union-attr]
                await store.close()  # a pool with no connection open yet, as after an idle spell
                store._pool = await asyncpg.create_pool(limited, min_size=0, max_size=1, timeout=2.0)
                hog = await asyncpg.connect(limited)  # something else holds the role's one connection
                try:
                    response = await post(h, "bfl", job_id, json.dumps({"id": pid, "status": "Pending"}).encode())
                    assert response.status_code == 503, response.text
                finally:
                    await hog.close()
                response = await post(h, "bfl", job_id, json.dumps({"id": pid, "status": "Pending"}).encode())
                assert response.status_code == 200, response.text
        finally:
            await store.close()
            await admin.execute(f'DROP OWNED BY "{role}"')
            await admin.execute(f'DROP ROLE "{role}"')
            await admin.close()


async def test_storing_a_file_while_a_callback_brings_urls_never_deadlocks() -> None:
    """Both transactions lock the job's row before its files' (they once took them in opposite order)."""
    async with replicas(2) as (a, b):
        for i in range(60):
            await a.create_job(job(f"j{i}"))
            await a.record_submit(f"j{i}", f"p{i}", None, now=NOW, next_check_at=NOW)
            ready = obs(Status.SUCCEEDED, (f"https://r/{i}.png",), provider_job_id=f"p{i}")
            await a.apply(f"j{i}", ready, now=NOW, next_check_at=NOW, expires=(NOW + 600,))
        for i in range(60):
            again = obs(Status.SUCCEEDED, (f"https://r/{i}-fresh.png",), provider_job_id=f"p{i}")
            await asyncio.gather(
                a.store_file(f"j{i}", 0, path=f"j{i}/0.png", size=1, sha256="0" * 64, content_type="image/png"),
                b.apply(f"j{i}", again, now=NOW, next_check_at=NOW, expires=(NOW + 900,)),
            )  # a deadlock would raise StoreUnavailable here
            (record,) = await a.files(f"j{i}")
            assert record.stored


async def test_a_stale_progress_report_racing_a_result_does_not_push_its_download_back() -> None:
    """apply reads the job's row FOR UPDATE: a `running` report that read the job before the result committed
    waits, then sees `succeeded` and leaves its schedule (download now) alone."""
    async with replicas(2) as (a, b):
        await a.create_job(job())
        await a.record_submit("j1", "p1", None, now=NOW, next_check_at=NOW + 60)
        await a.apply("j1", obs(Status.RUNNING), now=NOW, next_check_at=NOW + 60)
        for _ in range(20):
            await asyncio.gather(
                a.apply("j1", obs(Status.SUCCEEDED, ("https://r/0.png",)), now=NOW, next_check_at=NOW,
                        expires=(NOW + 600,)),
                b.apply("j1", obs(Status.RUNNING), now=NOW, next_check_at=NOW + 300),
            )
            got = await a.get_job("j1")
            assert got is not None and got.status == Status.SUCCEEDED and got.next_check_at == NOW
        assert [j.id for j in await a.claim_due("dl", now=NOW, lease=60, limit=5, downloads=True)] == ["j1"]
