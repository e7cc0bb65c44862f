"""What a provider's list of result URLs tells before anything is downloaded: when each URL
stops working, and whether there are more of them than a job may have.

Pure functions, kept apart from the downloader (and its HTTP client), because the callback
path needs them too.
"""

from __future__ import annotations

import datetime as dt
import re
from urllib.parse import parse_qsl, urlsplit

from submitter.bodies import Observation

__all__ = ["expiries", "masked_url", "too_many_outputs", "url_expiry"]


def url_expiry(url: str) -> float | None:
    """Epoch seconds at which a signed URL stops working, or None if unknown."""
    try:
        pairs = parse_qsl(urlsplit(str(url)).query, keep_blank_values=True)
        query = {key.lower(): value for key, value in reversed(pairs)}  # first wins
        if "se" in query:  # Azure SAS
            return _iso_epoch(query["se"])
        for prefix in ("x-amz-", "x-goog-"):  # S3 SigV4, GCS V4
            if f"{prefix}date" in query and f"{prefix}expires" in query:
                start = dt.datetime.strptime(query[f"{prefix}date"], "%Y%m%dT%H%M%SZ")
                seconds = _seconds(query[f"{prefix}expires"])
                return start.replace(tzinfo=dt.UTC).timestamp() + seconds
        if "expires" in query:  # CloudFront, S3 SigV2
            return float(_seconds(query["expires"]))
    except (ValueError, OverflowError, TypeError):
        return None
    return None


def _iso_epoch(value: str) -> float:
    stamp = dt.datetime.fromisoformat(value.strip().replace(" ", "+"))
    return (stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.UTC)).timestamp()


def _seconds(value: str) -> int:
    if not (value.isascii() and value.isdigit()):
        raise ValueError(value)
    return int(value)


def expiries(observation: Observation, *, now: float, lifetime: float) -> tuple[float, ...]:
    """When each result URL stops working: from its signature, else the provider's typical
    `lifetime` counted from completion (or from `now`, if the provider did not say)."""
    start = min(observation.completed_at or now, now)
    default = start + lifetime
    return tuple(url_expiry(u) or default for u in observation.urls)


def too_many_outputs(observation: Observation, cap: int) -> str | None:
    """Why a result listing more files than `cap` (FLUXHOOK_MAX_OUTPUTS) is refused (None: it is not)."""
    if len(observation.urls) <= cap:
        return None
    return (f"the provider listed {len(observation.urls)} result files; at most {cap} are accepted per job"
            " (FLUXHOOK_MAX_OUTPUTS)")


def masked_url(url: str) -> str:
    """The URL with its password masked (in the userinfo and in a `password=` parameter), for
    messages and logs. Works on the text, so multi-host and IPv6 URLs keep their shape."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, tail = rest.partition("/")
    userinfo, at, hosts = authority.rpartition("@")
    if at and ":" in userinfo:
        authority = f"{userinfo.split(':', 1)[0]}:***@{hosts}"
    tail = re.sub(r"(?i)((?:^|[?&])password=)[^&#]*", r"\1***", tail)
    return f"{scheme}://{authority}{slash}{tail}"
