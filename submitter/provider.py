"""A provider as configured: its dialect, base URL and API key (no HTTP client: the receiver's
callback path and settings use it without loading one)."""

from __future__ import annotations

from dataclasses import dataclass

from submitter.dialects import Dialect

__all__ = ["Provider"]


@dataclass(frozen=True)
class Provider:
    """A dialect bound to a base URL and an API key."""

    dialect: Dialect
    base_url: str
    api_key: str | None

    @property
    def name(self) -> str:
        return self.dialect.name

    def __repr__(self) -> str:
        return f"Provider({self.name!r}, {self.base_url!r}, api_key='**********')"
