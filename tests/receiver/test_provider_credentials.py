"""A provider's API key that is not set is found before anything is recorded or sent, and the message names the
variable it comes from (the dialect's `key_env`): `fluxhook submit`, `POST /v1/jobs` and `fluxhook batch`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from receiver.cli.main import main
from receiver.config.integrations import Integrations
from receiver.config.keys import parse_api_keys
from submitter.provider import Provider
from tests.harness import SIM, harness
from tests.receiver.cli.test_cli_batch import jobs_in

API_KEY = "api-key-0123456789abcdef"
#: Nothing listens here: a job sent despite the missing key would fail to connect, not reach a real provider.
NOWHERE = "http://127.0.0.1:9"


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name in ("BFL_API_KEY", "FLUXHOOK_API_URL", "FLUXHOOK_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    values = {
        "FLUXHOOK_DB": str(tmp_path / "cli.db"), "FLUXHOOK_RESULTS": str(tmp_path / "results"),
        "FLUXHOOK_PUBLIC_URL": "https://hooks.example.com", "FLUXHOOK_SECRET_KEY": "s" * 40,
        "FLUXHOOK_BFL_URL": NOWHERE, "FLUXHOOK_REPLICATE_URL": NOWHERE, "REPLICATE_API_TOKEN": "r8-test",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


def test_submit_names_the_missing_key_and_records_nothing(env: dict[str, str],
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["submit", "--provider", "bfl", "--model", "flux-dev", "--prompt", "a fox"])
    err = capsys.readouterr().err
    assert code == 2  # a configuration error (README, Exit codes)
    assert "BFL_API_KEY is not set" in err
    assert jobs_in(env) == []


def test_batch_check_names_the_missing_key_once_and_batch_sends_nothing(
        env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "jobs.jsonl"
    lines = [{"provider": "bfl", "model": "flux-dev", "prompt": f"fox {n}"} for n in range(3)]
    lines.append({"provider": "replicate", "model": "black-forest-labs/flux-dev", "prompt": "a hen"})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert main(["batch", "--check", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("BFL_API_KEY is not set") == 1
    assert "REPLICATE_API_TOKEN" not in err  # that one is set
    assert "3 line(s)" in err and "line 1" in err
    assert main(["batch", str(path)]) == 2
    assert capsys.readouterr().err.count("BFL_API_KEY is not set") == 1
    assert jobs_in(env) == []


@pytest.mark.anyio
async def test_the_api_answers_422_naming_the_variable_and_records_nothing(tmp_path: Path) -> None:
    keys = dataclasses.replace(Integrations(), api_keys=parse_api_keys(API_KEY))
    async with harness(tmp_path, integrations=keys) as h:
        # The harness gives every provider a key; take BFL's away.
        bfl = h.settings.providers["bfl"]
        providers = {**h.settings.providers, "bfl": Provider(bfl.dialect, SIM, None)}
        h.rt.settings = h.settings.with_overrides(providers=providers)
        headers = {"authorization": f"Bearer {API_KEY}"}
        body = {"provider": "bfl", "model": "flux-dev", "params": {"prompt": "a fox"}}
        response = await h.client.post("/v1/jobs", json=body, headers=headers)
        assert response.status_code == 422
        error = response.json()["error"]
        assert error["field"] == "provider" and "BFL_API_KEY is not set" in error["message"]
        assert (await h.client.get("/v1/jobs", headers=headers)).json()["jobs"] == []
        # Another provider, whose key is set, still works.
        other = {**body, "provider": "deerapi"}
        assert (await h.client.post("/v1/jobs", json=other, headers=headers)).status_code == 201
