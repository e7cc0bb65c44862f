"""`/openapi.json`: its shape, and schemathesis fuzzing every documented operation in-process.

The fuzzed app is the real one, its runtime opened by the lifespan on a SQLite file, driven by
schemathesis's ASGI client (one event loop thread of its own). The event stream never ends, so
it is left out of the fuzzing (tests/receiver/web/test_api_events.py covers it); long-polls are capped at
a tenth of a second by `max_wait`, so a generated `wait` cannot stall the run.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.routing import Route

from receiver.config.integrations import Integrations
from receiver.config.keys import parse_api_keys
from receiver.web.api import api_routes
from receiver.web.api.openapi import document
from receiver.web.app import create_app
from submitter.dialects import DIALECTS
from tests.harness import make_settings
from tests.receiver.web.test_api import AUTH, BODY, KEY, api_harness, drive

pytestmark = pytest.mark.anyio


def test_document_covers_every_route() -> None:
    doc = document(("bfl", "replicate"), {"bfl": DIALECTS["bfl"]})
    assert doc["openapi"] == "3.1.0"
    assert doc["components"]["securitySchemes"]["apiKey"] == {
        "type": "http", "scheme": "bearer", "description": "A key of FLUXHOOK_API_KEYS."}
    routes = {(r.path, m.lower()) for r in api_routes() if isinstance(r, Route) for m in r.methods or () if m != "HEAD"}
    documented = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    assert routes <= documented and ("/v1/sweep", "post") in documented
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert {"401", "404"} <= set(op["responses"]), (path, method)
            for answer in op["responses"].values():
                for media in answer.get("content", {}).values():
                    ref = media["schema"].get("$ref")
                    if ref:
                        assert ref.removeprefix("#/components/schemas/") in doc["components"]["schemas"]
    create = doc["components"]["schemas"]["CreateJob"]
    assert create["required"] == ["provider", "model", "params"] and create["additionalProperties"] is False
    assert create["properties"]["provider"]["enum"] == ["bfl"]


async def test_served_with_a_key(tmp_path: Path) -> None:
    async with api_harness(tmp_path) as h:
        answer = await h.client.get("/openapi.json")
        assert answer.status_code == 200
        assert answer.json()["paths"].keys() == document().get("paths", {}).keys()
        assert set(answer.json()["components"]["schemas"]["CreateJob"]["properties"]["provider"]["enum"]) == set(
            h.settings.providers)
        h.client.headers.pop("authorization")
        assert (await h.client.get("/openapi.json")).status_code == 401


def conforms(doc: dict[str, Any], name: str, value: Any) -> None:
    """`value` is valid against the component schema `name` (JSON Schema 2020-12, refs resolved in `doc`)."""
    validator = jsonschema.Draft202012Validator({"$ref": f"#/components/schemas/{name}",
                                                 "components": doc["components"]})
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(value)]
    assert not errors, errors


async def test_answers_and_events_match_the_schemas(tmp_path: Path) -> None:
    async with api_harness(tmp_path) as h:
        doc = (await h.client.get("/openapi.json")).json()
        job = (await h.client.post("/v1/jobs", json={**BODY, "metadata": {"k": [1, None]}})).json()
        conforms(doc, "JobView", job)
        await drive(h, job["id"])
        stored = (await h.client.get(f"/v1/jobs/{job['id']}")).json()
        assert stored["files"]
        conforms(doc, "JobView", stored)
        conforms(doc, "JobList", (await h.client.get("/v1/jobs")).json())
        conforms(doc, "ErrorBody", (await h.client.get("/v1/jobs/fh_nope")).json())
        events = await h.rt.store.events_after(0)
        assert events
        for event in events:
            conforms(doc, "EventEnvelope", json.loads(event.body()))


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from schemathesis.python import asgi

    base = make_settings(tmp_path_factory.mktemp("openapi"))
    app_settings = base.with_overrides(
        # A `submit` key: every job route is open to it, and POST /v1/sweep (admin keys only) is not, so the
        # fuzzer never runs a real sweep pass against providers that are not there.
        integrations=dataclasses.replace(Integrations(), api_keys=parse_api_keys(f"fuzz:submit:{KEY}"), max_wait=0.1),
    )
    app = create_app(app_settings, workers=False)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, headers=AUTH)
    with asgi.get_client(app) as client:  # a real job, so the per-job operations see one too
        seeded = client.post("/v1/jobs", json=BODY, headers=AUTH)
        assert seeded.status_code == 201, seeded.text
    schema.seeded_job = seeded.json()["id"]
    try:
        yield schema
    finally:
        asgi.shutdown_lifespans()  # closes the runtime (store, clients) the lifespan opened


FUZZED = [(method, path) for path, ops in document().get("paths", {}).items() if path != "/v1/events"
          for method in ops]
POSITIVE_CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance, content_type_conformance,
                   positive_data_acceptance]
NEGATIVE_CHECKS = [not_a_server_error, negative_data_rejection]


# Hypothesis driven directly, one operation per test: schemathesis's own pytest loader
# (`schemathesis.pytest.from_fixture`) does not run under pytest 9 (it reads a removed `_nodeid`).
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize(("method", "path"), FUZZED)
def test_fuzz(api_schema: Any, method: str, path: str, mode: GenerationMode) -> None:
    operation = api_schema[path][method]
    # Positive cases must get documented answers; anything at all must never get a 5xx.
    checks = POSITIVE_CHECKS if mode == GenerationMode.POSITIVE else NEGATIVE_CHECKS

    strategy = operation.as_strategy(generation_mode=mode)
    if "{job_id}" in path:
        strategy = strategy | operation.as_strategy(generation_mode=mode,
                                                    path_parameters={"job_id": api_schema.seeded_job})

    @given(case=strategy)
    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def run(case: Any) -> None:
        # A case whose negation is its Authorization header is sent as generated (401), not with the real key.
        negated = {m.parameter for m in getattr(case.meta.phase.data, "mutations", ())}
        case.call_and_validate(headers={} if "Authorization" in negated else AUTH, checks=checks)

    run()
