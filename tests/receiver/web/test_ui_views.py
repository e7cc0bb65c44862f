"""The jobs table's error column and the gallery's larger view (CSS :target, no script), in-process."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from submitter.status import Status
from tests.harness import Harness
from tests.receiver.web.test_ui import EVIL, login, make_job, ui_harness

pytestmark = pytest.mark.anyio


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    async with ui_harness(tmp_path) as harnessed:
        yield harnessed


async def test_the_jobs_table_shows_each_jobs_error(h: Harness) -> None:
    failed = await make_job(h, until=Status.SUBMITTED, params={"prompt": "held"})
    await h.rt.store.finish(failed, Status.FAILED, now=h.clock(), reason=f"provider said no {EVIL}" + "x" * 300)
    fine = await make_job(h)
    await login(h)
    html = (await h.client.get("/ui/jobs")).text
    assert '<th scope="col">Error</th>' in html
    rows = {m[0]: m[1] for m in re.findall(r'<tr>\s*<th scope="row"><a href="[^"]+">([^<]+)</a></th>(.*?)</tr>', html,
                                            re.S)}
    error = re.search(r'<td class="error" data-label="Error">([^<]*)</td>', rows[failed])
    assert error is not None and error[1].startswith("provider said no &lt;script&gt;") and error[1].endswith("…")
    assert len(error[1]) < 250  # cut: the job page has it whole
    assert '<td class="error"></td>' in rows[fine]


async def test_the_gallery_has_a_larger_view_of_each_image(h: Harness) -> None:
    job_id = await make_job(h, params={"prompt": "an owl"})
    await login(h)
    html = (await h.client.get("/ui")).text
    assert '<a href="#view-1" title="Larger view"><img src="' in html
    view = html.split('<section class="lightbox" id="view-1"', 1)[1].split("</section>", 1)[0]
    assert f'<img class="large" src="/ui/jobs/{job_id}/files/0" alt="an owl"' in view
    assert f'<a href="/ui/jobs/{job_id}">{job_id}</a>' in view
    for fact in ("Prompt", "Provider", "Model", "Created", "Stored", "Time to artifact"):
        assert f"<dt>{fact}</dt>" in view, fact
    assert "<dd>flux-dev</dd>" in view and "style=" not in html
