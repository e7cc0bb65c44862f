"""The one place that knows fluxhook's secrets and removes them from text.

Providers echo requests back in error messages (`Incorrect API key provided: Bearer
k-...`), Replicate callbacks carry our callback URL, gateways quote the URL they
could not reach. Anything fluxhook stores, logs or shows passes through a
:class:`Redactor`, which removes:

- the secrets it is configured with: the master key, every provider API key,
  Replicate's webhook signing secrets;
- each job's derived path token and webhook secret, for the job named by the
  caller and for every job id (`fh_...`) the text itself mentions;
- what has the shape of a credential wherever it came from (:mod:`submitter.redaction`):
  the token segment of a callback path, URL query strings (result URL signatures),
  `Bearer ...`, `x-key`.

It is applied at the boundaries: the store wrapper (:mod:`receiver.store.redacting`)
for every text column and audit event, the logging filter (:mod:`receiver.obs.logs`) and
the CLI's views.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING
from urllib.parse import unquote

from submitter.redaction import MARK, MIN_SECRET, scrub, scrub_patterns
from submitter.signing import derive_job_keys

if TYPE_CHECKING:
    from receiver.config.settings import Settings

__all__ = ["MARK", "Redactor", "scrub_patterns"]

_JOB_ID = re.compile(r"fh_[0-9a-f]{32}")


def _db_password(db: str) -> str | None:
    """A database URL's password (userinfo or `password=` parameter), if it has one."""
    if not db.startswith(("postgresql://", "postgres://")):
        return None
    authority = db.partition("://")[2].partition("/")[0]
    userinfo, at, _ = authority.rpartition("@")
    if at and ":" in userinfo:
        return unquote(userinfo.split(":", 1)[1])
    found = re.search(r"(?i)[?&]password=([^&#]*)", db)
    return unquote(found.group(1)) if found else None


class Redactor:
    """Scrubs text of every secret fluxhook knows. Immutable; cheap to call on text without secrets."""

    def __init__(
        self, secrets: Iterable[str | bytes | None], *, master: bytes | None, providers: Iterable[str]
    ) -> None:
        values: set[str] = set()
        for secret in (*secrets, master):
            if not secret:
                continue
            text = secret.decode("utf-8", "replace") if isinstance(secret, bytes) else secret
            values.add(text)
            if text.startswith("whsec_"):
                values.add(text.removeprefix("whsec_"))  # the base64 part alone
        self._static = tuple(sorted((v for v in values if len(v) >= MIN_SECRET), key=len, reverse=True))
        self._master = master
        self._providers = tuple(providers)

    @classmethod
    def from_settings(cls, settings: Settings) -> Redactor:
        """Every secret a :class:`~receiver.config.settings.Settings` holds."""
        secrets: list[str | bytes | None] = [p.api_key for p in settings.providers.values()]
        secrets += [*settings.replicate_webhook_secrets, _db_password(settings.db), *settings.integrations.secrets(),
                    settings.sweep_token, settings.metrics_token]
        return cls(secrets, master=settings.secret_key, providers=settings.providers)

    def job_secrets(self, job_id: str, provider: str | None = None) -> list[str]:
        """The derived token and webhook secret of `job_id` (under `provider`, or every provider)."""
        if self._master is None:
            return []
        found: list[str] = []
        for name in (provider,) if provider else self._providers:
            keys = derive_job_keys(self._master, name, job_id)
            found += [keys.token, keys.webhook_secret]
        return found

    def scrub(self, text: str | None, *, job_id: str | None = None, provider: str | None = None) -> str | None:
        """`text` without any secret; None stays None."""
        if not text:
            return text
        derived: list[str] = []
        for mentioned in {job_id, *_JOB_ID.findall(text)} - {None}:
            assert mentioned is not None
            derived += self.job_secrets(mentioned, provider if mentioned == job_id else None)
        return scrub(text, (*derived, *self._static))

    def scrub_bytes(self, body: bytes, *, job_id: str | None = None, provider: str | None = None) -> bytes:
        """A UTF-8 body (a callback's) scrubbed the same way; other bytes are only scrubbed of
        the secrets themselves."""
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            secrets = [*(self.job_secrets(job_id, provider) if job_id else ()), *self._static]
            for secret in secrets:
                body = body.replace(secret.encode(), MARK.encode())
            return body
        return (self.scrub(text, job_id=job_id, provider=provider) or "").encode("utf-8")
