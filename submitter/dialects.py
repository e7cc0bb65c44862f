"""Each provider's protocol as data: auth, paths, body shape, signature scheme, limits.

Adding a provider that speaks a known shape and scheme means adding a
:class:`Dialect` value to :data:`DIALECTS`; nothing else in the code branches
on a provider's name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from submitter.bodies import BFL, REPLICATE, Observation, Shape

__all__ = ["DIALECTS", "Dialect", "parse_observation"]

#: Where BFL serves results (README.md, FLUXHOOK_DOWNLOAD_HOSTS): its regional delivery hosts change, so any
#: subdomain of bfl.ai, plus the Azure storage accounts its results have been seen on.
#: Not `*.blob.core.windows.net`: anyone can create an Azure storage account there.
#: FLUXHOOK_DOWNLOAD_HOSTS replaces the list when BFL moves to an account not named here.
BFL_DELIVERY_HOSTS = (
    "*.bfl.ai",
    "bfldeliveryprodeu4.blob.core.windows.net",
    "bfldeliveryprod.blob.core.windows.net",
)
#: Where Replicate serves output files (README.md, FLUXHOOK_DOWNLOAD_HOSTS).
REPLICATE_DELIVERY_HOSTS = ("replicate.delivery", "*.replicate.delivery")

_MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_OWNER_MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}/[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclass(frozen=True)
class Dialect:
    """How to talk to one provider."""

    name: str
    base_url: str
    key_env: str
    url_env: str
    #: "x-key" sends the key raw in `x-key`; "bearer" sends `Authorization: Bearer`.
    auth: str
    submit_path: str  # formatted with model=
    poll_path: str  # formatted with id=
    shape: Shape = BFL
    #: "bfl" (path token, plus X-BFL-Signature / X-Webhook-Secret when sent) or
    #: "standard-webhooks" (webhook-id / -timestamp / -signature, account secret).
    signature: str = "bfl"
    #: Whether a callback must carry a signature we can verify. Proxies sign with their
    #: own account secret, which users cannot get: there the path token authenticates.
    signature_required: bool = False
    cancel_path: str | None = None
    #: Where the account's webhook signing secret can be fetched (Replicate), if anywhere.
    secret_path: str | None = None
    #: Poll the `polling_url` the provider returned (BFL's regional routing),
    #: provided it is https and its host is one of `polling_hosts` (it gets the API
    #: key); proxies echo BFL's raw URL, which their key cannot use, so they poll
    #: `poll_path` instead.
    use_polling_url: bool = False
    polling_hosts: tuple[str, ...] = ()
    download_hosts: tuple[str, ...] = BFL_DELIVERY_HOSTS
    #: Result URLs without a readable expiry are assumed to live this long after completion.
    url_lifetime: float = 600.0
    #: Active jobs the provider allows per account, and per model where lower.
    concurrency: int = 24
    model_concurrency: Mapping[str, int] = field(default_factory=dict)
    #: Replicate-style models are `owner/name`; BFL's are one path segment.
    owner_model: bool = False
    default_events: tuple[str, ...] = ()

    def auth_headers(self, key: str) -> dict[str, str]:
        if self.auth == "x-key":
            return {"x-key": key}
        return {"authorization": f"Bearer {key}"}

    def check_model(self, model: str) -> str:
        """The model name if it is well-formed for this provider, else ValueError."""
        pattern = _OWNER_MODEL if self.owner_model else _MODEL
        if not pattern.fullmatch(model) or ".." in model:
            form = "owner/name" if self.owner_model else "a single name such as flux-dev"
            raise ValueError(f"model {model!r} is not {form}")
        return model

    def submit_url(self, base: str, model: str) -> str:
        return base.rstrip("/") + self.submit_path.format(model=quote(self.check_model(model), safe="/"))

    def poll_url(self, base: str, provider_job_id: str) -> str:
        return base.rstrip("/") + self.poll_path.format(id=quote(provider_job_id, safe=""))

    def cancel_url(self, base: str, provider_job_id: str) -> str | None:
        if self.cancel_path is None:
            return None
        return base.rstrip("/") + self.cancel_path.format(id=quote(provider_job_id, safe=""))

    def cap_for(self, model: str) -> int:
        return self.model_concurrency.get(model, self.concurrency)

    def submit_body(
        self, params: Mapping[str, Any], webhook_url: str, webhook_secret: str, events: Sequence[str] = ()
    ) -> dict[str, Any]:
        return self.shape.submit_body(params, webhook_url, webhook_secret, events or self.default_events)


def parse_observation(dialect: Dialect, data: Mapping[str, Any]) -> Observation:
    """Read a callback body or poll answer of `dialect`'s provider."""
    return dialect.shape.observe(data)


_BFL_PROXY: dict[str, Any] = {
    "auth": "bearer",
    "submit_path": "/flux/v1/{model}",
    "poll_path": "/flux/v1/get_result?id={id}",
}
_REPLICATE: dict[str, Any] = {
    "auth": "bearer",
    "shape": REPLICATE,
    "signature": "standard-webhooks",
    "download_hosts": REPLICATE_DELIVERY_HOSTS,
    "url_lifetime": 3600.0,
    # Replicate limits request rates (600 creates/min), not running predictions.
    "concurrency": 100,
    "owner_model": True,
    "default_events": ("start", "completed"),
}
_REPLICATE_PROXY: dict[str, Any] = {
    **_REPLICATE,
    "submit_path": "/replicate/v1/models/{model}/predictions",
    "poll_path": "/replicate/v1/predictions/{id}",
    "cancel_path": "/replicate/v1/predictions/{id}/cancel",
}

DIALECTS: Mapping[str, Dialect] = {
    d.name: d
    for d in (
        Dialect(
            name="bfl",
            base_url="https://api.bfl.ai",
            key_env="BFL_API_KEY",
            url_env="FLUXHOOK_BFL_URL",
            auth="x-key",
            submit_path="/v1/{model}",
            poll_path="/v1/get_result?id={id}",
            use_polling_url=True,
            polling_hosts=("*.bfl.ai",),
            model_concurrency={"flux-kontext-max": 6},
        ),
        Dialect(name="deerapi", base_url="https://api.deerapi.com", key_env="DEERAPI_KEY",
                url_env="FLUXHOOK_DEERAPI_URL", **_BFL_PROXY),
        Dialect(name="cometapi", base_url="https://api.cometapi.com", key_env="COMETAPI_KEY",
                url_env="FLUXHOOK_COMETAPI_URL", **_BFL_PROXY),
        Dialect(
            name="replicate",
            base_url="https://api.replicate.com",
            key_env="REPLICATE_API_TOKEN",
            url_env="FLUXHOOK_REPLICATE_URL",
            submit_path="/v1/models/{model}/predictions",
            poll_path="/v1/predictions/{id}",
            cancel_path="/v1/predictions/{id}/cancel",
            secret_path="/v1/webhooks/default/secret",  # noqa: S106 - a URL path, not a secret
            signature_required=True,
            **_REPLICATE,
        ),
        Dialect(name="deerapi-replicate", base_url="https://api.deerapi.com", key_env="DEERAPI_KEY",
                url_env="FLUXHOOK_DEERAPI_URL", **_REPLICATE_PROXY),
        Dialect(name="cometapi-replicate", base_url="https://api.cometapi.com", key_env="COMETAPI_KEY",
                url_env="FLUXHOOK_COMETAPI_URL", **_REPLICATE_PROXY),
    )
}
