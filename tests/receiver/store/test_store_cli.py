"""Contract tests for the store reads and the retry exception the CLI uses, on every backend."""

from __future__ import annotations

import pytest

from receiver.store import Store
from submitter.status import Status
from tests.receiver.store.test_store import NOW, event, job, obs, store  # noqa: F401 - `store` is the backend fixture

pytestmark = pytest.mark.anyio


async def test_audit_events_have_ids_and_read_back(store: Store) -> None:  # noqa: F811
    await store.create_job(job())
    await store.record_submit("j1", "p1", None, now=NOW, next_check_at=NOW + 60)
    await store.apply("j1", obs(Status.RUNNING), now=NOW + 1, next_check_at=NOW + 60, event=event("k1"))
    await store.apply("j1", obs(Status.RUNNING), now=NOW + 2, next_check_at=NOW + 60, event=event("k2"))
    rows = await store.audit_events("j1")
    assert [r["dedup_key"] for r in rows] == ["k1", "k2"]
    assert rows[0]["body"] == b"{}" and rows[0]["headers"] == {"x": "y"} and rows[0]["verdict"] == "accepted:token"
    one = await store.audit_event(rows[1]["id"])
    assert one is not None and one["dedup_key"] == "k2" and one["job_id"] == "j1"
    assert await store.audit_event(10**9) is None
    assert await store.audit_events("nobody") == []


async def _failed_download(store: Store, job_id: str = "j1") -> None:  # noqa: F811
    await store.create_job(job(job_id))
    await store.record_submit(job_id, f"p-{job_id}", None, now=NOW, next_check_at=NOW + 60)
    await store.apply(job_id, obs(Status.SUCCEEDED, urls=("https://cdn/x.png",), provider_job_id=f"p-{job_id}"),
                      now=NOW + 1, next_check_at=NOW + 1, expires=(NOW + 600,))
    await store.finish(job_id, Status.EXPIRED, now=NOW + 700, reason="URL expired")


async def test_reopen_for_retry_only_after_our_download_path(store: Store) -> None:  # noqa: F811
    await _failed_download(store)
    assert await store.reopen_for_retry("j1", now=NOW + 800, store_until=NOW + 5000)
    again = await store.get_job("j1")
    assert again is not None and again.status == Status.SUCCEEDED and again.error is None
    assert again.next_check_at == NOW + 800 and again.deadline_at >= NOW + 5000 - 1 and again.repolls == 0
    assert not await store.reopen_for_retry("j1", now=NOW + 801, store_until=NOW + 5000)  # not terminal now
    # A provider-reported failure (no result files) is final.
    await store.create_job(job("j2"))
    await store.record_submit("j2", "p2", None, now=NOW, next_check_at=NOW + 60)
    await store.apply("j2", obs(Status.FAILED, provider_job_id="p2"), now=NOW + 1, next_check_at=None)
    assert (await store.get_job("j2")).status == Status.FAILED  # type: ignore[union-attr]
    assert not await store.reopen_for_retry("j2", now=NOW + 2, store_until=NOW + 5000)
    # A stored job is final too.
    await store.create_job(job("j3"))
    await store.finish("j3", Status.CANCELED, now=NOW)
    assert not await store.reopen_for_retry("j3", now=NOW + 2, store_until=NOW + 5000)


async def test_the_retry_note_is_cleared_when_the_job_is_stored_and_kept_when_it_fails_again(
    store: Store,  # noqa: F811
) -> None:
    await _failed_download(store)
    assert await store.reopen_for_retry("j1", now=NOW + 800, store_until=NOW + 5000)
    assert (await store.get_job("j1")).note == "reopened for a download retry (fluxhook retry)"  # type: ignore[union-attr]
    await store.finish("j1", Status.FAILED, now=NOW + 900, reason="download refused")
    again = await store.get_job("j1")
    assert again is not None and again.note == "reopened for a download retry (fluxhook retry)"  # why it failed twice
    assert await store.reopen_for_retry("j1", now=NOW + 1000, store_until=NOW + 5000)
    await store.store_file("j1", 0, path="j1/0.png", size=3, sha256="abc", content_type="image/png")
    assert (await store.finish("j1", Status.STORED, now=NOW + 1100)).changed
    stored = await store.get_job("j1")
    assert stored is not None and stored.status == Status.STORED and stored.note is None
    # Any other note stays: only the retry's own is news that a stored job no longer has.
    await store.create_job(job("j2"))
    await store.record_submit("j2", "p-j2", None, now=NOW, next_check_at=NOW + 60, note="submit outcome unknown")
    await store.apply("j2", obs(Status.SUCCEEDED, urls=("https://cdn/x.png",), provider_job_id="p-j2"),
                      now=NOW + 1, next_check_at=NOW + 1, expires=(NOW + 600,))
    await store.store_file("j2", 0, path="j2/0.png", size=3, sha256="abc", content_type="image/png")
    assert (await store.finish("j2", Status.STORED, now=NOW + 2)).changed
    assert (await store.get_job("j2")).note == "submit outcome unknown"  # type: ignore[union-attr]


async def test_reopen_writes_no_outbox_event(store: Store) -> None:  # noqa: F811
    await _failed_download(store)
    before = await store.last_seq()
    assert await store.reopen_for_retry("j1", now=NOW + 800, store_until=NOW + 5000)
    assert await store.last_seq() == before


async def test_reconciliation_rows(store: Store) -> None:  # noqa: F811
    await _failed_download(store, "j1")
    await store.create_job(job("j2"))
    rows = await store.reconciliation(None)
    by_id = {r["id"]: r for r in rows}
    assert by_id["j1"]["status"] == "expired" and by_id["j1"]["files"] == 1 and by_id["j1"]["stored_files"] == 0
    assert by_id["j1"]["provider_job_id"] == "p-j1" and by_id["j2"]["stored_events"] == 0
    assert await store.reconciliation(NOW + 1) == []


async def test_reconciliation_of_one_api_keys_jobs(store: Store) -> None:  # noqa: F811
    await store.create_job(job("mine", created_by="ci"))
    await store.create_job(job("theirs", created_by="web"))
    await store.create_job(job("cli"))
    assert {r["id"] for r in await store.reconciliation(None)} == {"mine", "theirs", "cli"}
    assert [r["id"] for r in await store.reconciliation(None, created_by="ci")] == ["mine"]
    assert await store.reconciliation(NOW + 1, created_by="ci") == []
