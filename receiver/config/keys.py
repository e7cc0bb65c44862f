"""API keys with a name and a scope (FLUXHOOK_API_KEYS): who may do what on /v1, /ui and /metrics.

FLUXHOOK_API_KEYS is a comma-separated list. Each entry is `NAME:SCOPE:KEY` or, as before scopes
existed, a bare `KEY` (an `admin` key named `key-` plus the first 8 hex digits of its SHA-256, so
its name is stable however the list is reordered). The scopes:

- `admin`: every job (read, wait on, stream, cancel, retry a download), creating jobs, `/metrics`, operator details
  of `/healthz` and `/readyz`, `POST /v1/sweep`;
- `submit`: create jobs, and read, wait on, stream, cancel and retry only the jobs it created;
- `read`: read every job and event, `/metrics` and the operator details; create, cancel and retry nothing.

A job records the name of the key that created it (`created_by`), so renaming a `submit` key hands
its earlier jobs to nobody but `admin` and `read` keys. A key is at least 16 characters; names are
unique, as are keys. Neither a key nor any part of it reaches a repr, a log line or an error.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from enum import StrEnum

from receiver.config.env import SettingsError

__all__ = ["ApiKey", "Scope", "parse_api_keys"]

VARIABLE = "FLUXHOOK_API_KEYS"
MIN_LENGTH = 16
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class Scope(StrEnum):
    ADMIN = "admin"
    SUBMIT = "submit"
    READ = "read"


@dataclass(frozen=True)
class ApiKey:
    """One configured key: its public `name`, its `scope`, and the `secret` a caller presents."""

    name: str
    scope: Scope
    secret: str = field(repr=False)

    @property
    def sees_all(self) -> bool:
        """Reads every job (admin, read); a `submit` key sees only the jobs it created."""
        return self.scope in (Scope.ADMIN, Scope.READ)

    @property
    def writes(self) -> bool:
        """May create, cancel and retry jobs (admin, submit)."""
        return self.scope in (Scope.ADMIN, Scope.SUBMIT)

    @property
    def operates(self) -> bool:
        """May read /metrics and the operator details of /healthz and /readyz (admin, read)."""
        return self.scope in (Scope.ADMIN, Scope.READ)

    def owner_filter(self) -> str | None:
        """The `created_by` a listing is limited to: None (every job) or this key's name."""
        return None if self.sees_all else self.name

    def may_see(self, created_by: str | None) -> bool:
        return self.sees_all or created_by == self.name


def _entry(position: int, entry: str) -> ApiKey:
    where = f"{VARIABLE}: key #{position}"
    parts = entry.split(":", 2)
    if len(parts) == 3 and _NAME.fullmatch(parts[0]) and parts[1].isalpha() and parts[1].isascii():
        name, scope_text, secret = parts[0], parts[1].lower(), parts[2].strip()
        try:
            scope = Scope(scope_text)
        except ValueError:
            # Neither the name nor the scope is quoted: the entry may be a bare key with two colons in it.
            raise SettingsError(f"{where} has an unknown scope; write NAME:SCOPE:KEY with SCOPE one of"
                                f" {', '.join(s.value for s in Scope)} (a bare key holding two colons:"
                                " NAME:admin:KEY)") from None
        if len(secret) < MIN_LENGTH:
            raise SettingsError(f"{where} is shorter than {MIN_LENGTH} characters")
        return ApiKey(name, scope, secret)
    if len(entry) < MIN_LENGTH:
        raise SettingsError(f"{where} is shorter than {MIN_LENGTH} characters")
    return ApiKey("key-" + hashlib.sha256(entry.encode()).hexdigest()[:8], Scope.ADMIN, entry)


def parse_api_keys(value: str) -> tuple[ApiKey, ...]:
    """The keys of FLUXHOOK_API_KEYS's `value`; SettingsError naming the entry (never its key) if one is wrong."""
    keys = tuple(_entry(position, entry.strip())
                 for position, entry in enumerate((e for e in value.split(",") if e.strip()), 1))
    names = [k.name for k in keys]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise SettingsError(f"{VARIABLE}: the name(s) {', '.join(twice)} are given to more than one key;"
                            " each key needs its own name")
    if len({k.secret for k in keys}) != len(keys):
        raise SettingsError(f"{VARIABLE}: the same key is listed twice; give each integration its own key")
    return keys
