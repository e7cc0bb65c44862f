"""URLs: what a provider's list of result URLs tells before anything is downloaded (when each URL
stops working, whether there are more of them than a job may have), and how each kind of URL may be
shown, logged or stored without its secret:

- a result URL (:func:`redact_url`): scheme, host, port and the file's name only (the query is its
  signature; some hosts grant access by the path itself);
- a webhook endpoint (:func:`display_url`): scheme, host and port only (paths carry secrets);
- a database URL (:func:`masked_url`): its password masked, the rest kept (it names the database).

Pure functions, kept apart from the downloader (and its HTTP client), because the callback path needs
them too.
"""

from __future__ import annotations

import datetime as dt
import re
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from submitter.bodies import Observation

__all__ = ["display_url", "expiries", "masked_url", "redact_url", "too_many_outputs", "url_expiry"]


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


def redact_url(url: object) -> str:
    """`scheme://host[:port]/…/name`: no userinfo, query (signature) or fragment, and only the
    last path segment (some hosts, e.g. replicate.delivery, grant access by the path itself)."""
    try:
        parts = urlsplit(str(url))
        host, port = parts.hostname or "", parts.port
    except ValueError:
        return "<invalid URL>"
    if not parts.scheme:
        return "<invalid URL>"
    host = f"[{host}]" if ":" in host else host
    name = parts.path.rsplit("/", 1)[-1]
    path = f"/…/{name}" if parts.path.count("/") > 1 else parts.path
    return f"{parts.scheme}://{host}{'' if port is None else f':{port}'}{path}"


def display_url(url: str) -> str:
    """The endpoint as it may be shown and stored: scheme, host and port only. Paths of webhook URLs
    often carry their secret (Slack, Discord, Zapier...), in any shape; the sink's name tells endpoints
    on one host apart."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, "/…" if parts.path not in ("", "/") else "/", "", ""))
