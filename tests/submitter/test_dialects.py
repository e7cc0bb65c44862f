"""Every body shape from the BFL fact sheet, read through the dialects."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from submitter import bodies
from submitter.bodies import BodyError, loads_object
from submitter.dialects import DIALECTS, parse_observation
from submitter.hosts import host_allowed
from submitter.status import Status

parse_submit_answer = bodies.BFL.submit_answer

BFL = DIALECTS["bfl"]
SAMPLE = "https://bfldeliveryprodeu4.blob.core.windows.net/results/2025/11/27/abc_sample.jpeg?se=2025-11-27T14%3A41%3A06Z&sp=r&sig=x"


@pytest.mark.parametrize(
    ("body", "job_id", "polling_url"),
    [
        ({"id": "38b4", "polling_url": "https://api.eu2.bfl.ai/v1/get_result?id=38b4", "cost": 3.0,
          "input_mp": 0.0, "output_mp": 1.0}, "38b4", "https://api.eu2.bfl.ai/v1/get_result?id=38b4"),
        ({"id": "w1", "status": "Pending", "webhook_url": "https://hooks.test/x"}, "w1", None),
        ({"id": "a7", "polling_url": "https://api.eu2.bfl.ai/v1/get_result?id=a7", "cost": None,
          "input_mp": None, "output_mp": None}, "a7", "https://api.eu2.bfl.ai/v1/get_result?id=a7"),
        ({"task_id": "t9"}, "t9", None),
    ],
)
def test_submit_answers(body: dict, job_id: str, polling_url: str | None) -> None:
    answer = parse_submit_answer(body)
    assert (answer.provider_job_id, answer.polling_url) == (job_id, polling_url)


@pytest.mark.parametrize("body", [{}, {"id": None}, {"id": ["x"]}, {"polling_url": "https://x"}, {"id": ""}])
def test_submit_answer_without_id(body: dict) -> None:
    with pytest.raises(BodyError):
        parse_submit_answer(body)


CASES = [
    # (body, status, urls, reason contains)
    ({"id": "1", "status": "Ready", "result": {"start_time": 1764253858.84, "prompt": "p", "seed": 1, "sample": SAMPLE},
      "progress": None, "details": None, "preview": None}, Status.SUCCEEDED, (SAMPLE,), None),
    ({"task_id": "1", "status": "SUCCESS", "result": {"sample": SAMPLE, "prompt": "p"}}, Status.SUCCEEDED, (SAMPLE,), None),
    ({"id": "1", "status": "ready", "cost": 20, "result": {"sample": SAMPLE}}, Status.SUCCEEDED, (SAMPLE,), None),
    ({"id": "1", "status": "Pending", "result": None, "progress": 0.4}, Status.RUNNING, (), None),
    ({"task_id": "1", "status": "processing", "progress": 50}, Status.RUNNING, (), None),
    ({"id": "1", "status": "Reasoning"}, Status.RUNNING, (), None),
    ({"id": "1", "status": "Task-queued"}, Status.RUNNING, (), None),
    ({"id": "1", "status": "Request Moderated", "result": None}, Status.MODERATED, (), "Request Moderated"),
    ({"id": "1", "status": "Content Moderated", "details": {"Moderation Reasons": ["Sexual Content", "Violence"]}},
     Status.MODERATED, (), "Sexual Content; Violence"),
    ({"task_id": "1", "status": "GENERATED CONTENT MODERATED"}, Status.MODERATED, (), "GENERATED"),
    ({"id": "1", "status": "Error", "error": "content_policy_violation", "message": "nope"}, Status.FAILED, (), "nope"),
    ({"id": "1", "status": "Failed"}, Status.FAILED, (), "Failed"),
    ({"task_id": "1", "status": "FAILED"}, Status.FAILED, (), "FAILED"),
    ({"id": "1", "status": "Ready", "result": None}, Status.FAILED, (), "without a result URL"),
    ({"id": "1", "status": "Something New"}, None, (), None),
]


@pytest.mark.parametrize(("body", "status", "urls", "reason"), CASES)
def test_observations(body: dict, status: Status | None, urls: tuple[str, ...], reason: str | None) -> None:
    for name in ("bfl", "deerapi", "cometapi"):
        observation = parse_observation(DIALECTS[name], body)
        assert observation.provider_job_id == "1"
        assert observation.status == status
        assert observation.urls == urls
        if reason:
            assert observation.reason and reason in observation.reason


def test_task_not_found_is_not_a_verdict_by_itself() -> None:
    observation = parse_observation(BFL, {"id": "1", "status": "Task not found"})
    assert observation.status is None and observation.not_found


def test_progress_is_read() -> None:
    assert parse_observation(BFL, {"task_id": "1", "status": "processing", "progress": 50}).progress == 50.0
    assert parse_observation(BFL, {"task_id": "1", "status": "processing", "progress": True}).progress is None


@pytest.mark.parametrize("raw", [b"", b"null", b"[1]", b"{", b"\xff", b'"Ready"', b"[" * 100_000])
def test_unreadable_bodies(raw: bytes) -> None:
    with pytest.raises(BodyError):
        loads_object(raw)


@pytest.mark.parametrize("body", [{"id": "1"}, {"id": "1", "status": 3}, {"id": "1", "status": None}])
def test_bodies_without_status(body: dict) -> None:
    with pytest.raises(BodyError):
        parse_observation(BFL, body)


def test_paths_and_auth() -> None:
    assert BFL.submit_url("https://api.bfl.ai/", "flux-dev") == "https://api.bfl.ai/v1/flux-dev"
    assert BFL.auth_headers("k") == {"x-key": "k"}
    deer = DIALECTS["deerapi"]
    assert deer.submit_url("https://api.deerapi.com", "flux-pro-1.1") == "https://api.deerapi.com/flux/v1/flux-pro-1.1"
    assert deer.poll_url("https://api.deerapi.com", "a/b") == "https://api.deerapi.com/flux/v1/get_result?id=a%2Fb"
    assert deer.auth_headers("k") == {"authorization": "Bearer k"}
    assert BFL.cap_for("flux-kontext-max") == 6 and BFL.cap_for("flux-dev") == 24


def test_bfl_downloads_only_from_its_own_hosts() -> None:
    """Not `*.blob.core.windows.net`: anyone can create an Azure storage account."""
    for name in ("bfl", "deerapi", "cometapi"):
        hosts = DIALECTS[name].download_hosts
        assert host_allowed(urlsplit(SAMPLE).hostname or "", hosts)
        assert host_allowed("delivery-eu1.bfl.ai", hosts)
        assert not host_allowed("attacker.blob.core.windows.net", hosts)
        assert "*.blob.core.windows.net" not in hosts
    assert BFL.polling_hosts == ("*.bfl.ai",) and BFL.use_polling_url
