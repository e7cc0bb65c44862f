"""What /v1 checks is what `/openapi.json` says: the published patterns agree with the handlers, value by value."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import jsonschema_rs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from receiver.web.api.jobs import decode_cursor
from receiver.web.api.models import ANY_MODEL_PATTERN, CURSOR_PATTERN, MODEL_PATTERNS
from submitter.dialects import DIALECTS
from tests.receiver.web.test_api import api_harness

pytestmark = pytest.mark.anyio

_MODEL_CHARS = st.text(alphabet="aZ09._-/ \n", max_size=12) | st.sampled_from(
    ["", ".", "a..b", "a/..b", "flux-dev", "o/n", "a" * 128, "a" * 129, "a/" + "b" * 128, "a/b/c", "-a", "a\n"])


def _matches(pattern: str, value: str) -> bool:
    """As ECMA 262 reads the pattern (schemathesis's validator; Python's `re.search` lets `$` pass a final newline)."""
    return bool(jsonschema_rs.validator_for({"type": "string", "pattern": pattern}).is_valid(value))


@settings(max_examples=300, deadline=None, database=None)
@given(model=_MODEL_CHARS)
def test_the_model_patterns_are_check_model(model: str) -> None:
    for dialect in DIALECTS.values():
        try:
            dialect.check_model(model)
            accepted = True
        except ValueError:
            accepted = False
        assert _matches(MODEL_PATTERNS[dialect.owner_model], model) == accepted, (dialect.name, model)
        assert not accepted or _matches(ANY_MODEL_PATTERN, model)


@settings(max_examples=300, deadline=None, database=None)
@given(cursor=st.text(alphabet="0123456789.e+-~fh_aZ", max_size=30))
def test_a_cursor_of_the_published_form_is_accepted_and_no_other(cursor: str) -> None:
    if _matches(CURSOR_PATTERN, cursor):
        created_at, job_id = decode_cursor(cursor)
        assert created_at == created_at and abs(created_at) < float("inf") and job_id
    else:
        with pytest.raises(Exception, match="cursor"):
            decode_cursor(cursor)


async def test_the_document_refuses_what_the_api_refuses(tmp_path: Path) -> None:
    async with api_harness(tmp_path) as h:
        doc = (await h.client.get("/openapi.json")).json()
        create = jsonschema.Draft202012Validator({"$ref": "#/components/schemas/CreateJob",
                                                  "components": doc["components"]})
        bodies: list[dict[str, Any]] = [
            {"provider": "bfl", "model": "", "params": {}},
            {"provider": "bfl", "model": "a/b", "params": {}},
            {"provider": "replicate", "model": "flux", "params": {}},
            {"provider": "bfl", "model": "flux-dev", "params": {}, "events": ["completed"]},
            {"provider": "replicate", "model": "a/b", "params": {}, "events": ["start"]},
            {"provider": "replicate", "model": "a/b", "params": {}, "events": []},
            {"provider": "bfl", "model": "flux-dev", "params": {}},
            {"provider": "replicate", "model": "a/b", "params": {}, "events": ["start", "completed"]},
        ]
        for body in bodies:
            answer = await h.client.post("/v1/jobs", json=body)
            assert create.is_valid(body) == (answer.status_code == 201), (body, answer.text)


@pytest.mark.parametrize(("path", "params"), [
    ("/v1/jobs", {"status": ""}), ("/v1/jobs", {"provider": ""}), ("/v1/jobs", {"cursor": ""}),
    ("/v1/jobs", {"cursor": "WzEsImEiXQ"}), ("/v1/report", {"since": ""}),
    ("/v1/report", {"since": "2026-01-31T12:00"}), ("/v1/report", {"since": "2026-02-30"}),
    ("/v1/events", {"job": ""}), ("/v1/events", {"types": ""}), ("/v1/events", {"types": "job.stored, job.failed"}),
])
async def test_empty_and_unpublished_values_are_refused(tmp_path: Path, path: str, params: dict[str, str]) -> None:
    async with api_harness(tmp_path) as h:
        answer = await h.client.get(path, params=params)
        assert answer.status_code == 422 and answer.json()["error"]["field"] == next(iter(params)), answer.text


async def test_published_values_are_accepted(tmp_path: Path) -> None:
    async with api_harness(tmp_path) as h:
        for n in range(3):
            h.clock.advance(1)
            assert (await h.client.post("/v1/jobs", json={"provider": "bfl", "model": "flux-dev",
                                                          "params": {"n": n}})).status_code == 201
        first = (await h.client.get("/v1/jobs", params={"limit": 2})).json()
        assert _matches(CURSOR_PATTERN, first["next_cursor"])
        rest = (await h.client.get("/v1/jobs", params={"limit": 2, "cursor": first["next_cursor"]})).json()
        assert len(rest["jobs"]) == 1 and rest["next_cursor"] is None
        made_up = (await h.client.get("/v1/jobs", params={"cursor": "0~fh_none"})).json()
        assert made_up == {"jobs": [], "next_cursor": None}
        for since, shown in (("2026-01-31", "2026-01-31T00:00:00.000Z"),
                             ("2026-01-31t12:00:00.5+01:00", "2026-01-31T11:00:00.500Z"),
                             ("2016-12-31T23:59:60Z", "2017-01-01T00:00:00.000Z"),
                             ("0000-01-01T00:00:00Z", "0001-01-01T00:00:00.000Z")):
            answer = await h.client.get("/v1/report", params={"since": since})
            assert answer.status_code == 200 and answer.json()["since"] == shown, (since, answer.text)
