"""The pages' CSP lets images come from where the UI's file URLs redirect: nowhere else with a local folder, the
bucket's origin (where its presigned URLs point) with results in S3. tests/e2e/test_ui_s3.py loads them in Chromium."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from receiver.config.integrations import Integrations
from receiver.config.keys import parse_api_keys
from receiver.results import presigned_origin
from receiver.results.local import LocalResultStore
from receiver.results.s3 import S3ResultStore
from receiver.web.ui.pages import CSP, csp
from tests.harness import harness
from tests.receiver.results.test_results import BUCKET, aws_env, s3_endpoint  # noqa: F401 (fixtures)
from tests.receiver.web.test_ui import AUTH, KEY, ui_harness

pytestmark = pytest.mark.anyio


def img_src(policy: str) -> list[str]:
    (directive,) = [d.split()[1:] for d in policy.split(";") if d.split()[:1] == ["img-src"]]
    return directive


@pytest.mark.parametrize("endpoint", [None, "http://127.0.0.1:9000", "https://acct.r2.cloudflarestorage.com/",
                                      "https://user:secret@minio.test:9443"])
async def test_the_origin_is_where_presigned_urls_point(aws_env: None, endpoint: str | None) -> None:  # noqa: F811
    store = S3ResultStore("my-bucket", "some/prefix", endpoint=endpoint, region="eu-west-1")
    signed = urlsplit(await store.presign("job/0.png", 60))
    assert presigned_origin(store) == f"{signed.scheme}://{signed.hostname}" + (f":{signed.port}" if signed.port else "")
    assert "secret" not in (presigned_origin(store) or "")


def test_a_local_folder_has_no_other_origin(tmp_path: Path) -> None:
    assert presigned_origin(LocalResultStore(tmp_path)) is None
    assert csp(None) == CSP and img_src(CSP) == ["'self'"]


@pytest.mark.parametrize("bad", ["http://a.test; script-src *", "* ", "http://a.test 'unsafe-inline'", "data:",
                                 "https://a.test/path"])
def test_an_origin_that_could_widen_the_policy_is_left_out(bad: str) -> None:
    assert csp(bad) == CSP


async def test_pages_allow_images_from_the_local_receiver_only(tmp_path: Path) -> None:
    async with ui_harness(tmp_path) as h:
        answer = await h.client.get("/ui", headers=AUTH)
        assert answer.status_code == 200 and img_src(answer.headers["content-security-policy"]) == ["'self'"]


async def test_pages_allow_images_from_the_bucket_with_s3_results(
    tmp_path: Path, s3_endpoint: str, aws_env: None,  # noqa: F811
) -> None:
    integrations = dataclasses.replace(Integrations(), api_keys=parse_api_keys(KEY))
    url = f"s3://{BUCKET}/csp-{os.urandom(4).hex()}"
    async with harness(tmp_path, integrations=integrations, results_url=url, s3_endpoint=s3_endpoint) as h:
        for path in ("/ui", "/ui/jobs", "/ui/providers", "/ui/jobs/fh_missing"):
            answer = await h.client.get(path, headers=AUTH)
            policy = answer.headers["content-security-policy"]
            assert img_src(policy) == ["'self'", s3_endpoint], (path, policy)
            assert policy.replace(f" {s3_endpoint}", "") == CSP  # nothing else widened
