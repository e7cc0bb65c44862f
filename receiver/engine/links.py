"""Links in delivered events: per stored file, an absolute URL that works without an API key until it expires.

The relay calls :meth:`EventLinks.add` on each event as it hands it to a sink, for every attempt: the links
are signed at delivery time, not stored in the outbox, so a retry hours later still carries links valid
for FLUXHOOK_EVENT_LINK_TTL from that attempt. An object store gives a presigned GET; a local folder a
signed link to this receiver (receiver/results/links.py, served by receiver/web/links.py), which needs
FLUXHOOK_PUBLIC_URL and FLUXHOOK_SECRET_KEY (without them `link` is null). A fresh link: GET the job.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from receiver.results import LocalResultStore, ResultStore
from receiver.results.links import link_key, link_url
from receiver.store import FileRecord, OutboxEvent, Store, iso

__all__ = ["EventLinks"]

log = logging.getLogger("fluxhook.links")


class EventLinks:
    """Adds `link` and `link_expires_at` to each file of an event's `data` (see the module)."""

    def __init__(
        self, *, results: ResultStore, store: Store, clock: Callable[[], float], ttl: float,
        public_url: str | None, secret_key: bytes | None,
    ) -> None:
        self.results, self.store, self.clock, self.ttl = results, store, clock, ttl
        self.public_url = public_url
        self._key = link_key(secret_key) if secret_key else None

    async def add(self, event: OutboxEvent) -> OutboxEvent:
        files = event.data.get("files")
        if not isinstance(files, list) or not files:
            return event
        expires = int(self.clock() + self.ttl)
        records = {r.n: r for r in await self.store.files(event.job_id) if r.stored}
        linked: list[dict[str, Any]] = []
        for view in files:
            record = records.get(int(view.get("n", -1))) if isinstance(view, dict) else None
            link = await self.link(record, expires) if record is not None else None
            linked.append({**view, "link": link, "link_expires_at": iso(expires) if link else None})
        return dataclasses.replace(event, data={**event.data, "files": linked})

    async def link(self, record: FileRecord, expires: int) -> str | None:
        """`record`'s link valid until `expires` (unix seconds), or None when none can be made."""
        if isinstance(self.results, LocalResultStore):
            if self._key is None or not self.public_url:
                return None
            return link_url(self.public_url, self._key, record.job_id, record.n, expires)
        assert record.path is not None
        try:
            return await self.results.presign(record.path, max(1, int(expires - self.clock())))
        except Exception as exc:
            log.warning("no presigned link for %s/%d: %s", record.job_id, record.n, type(exc).__name__)
            return None
