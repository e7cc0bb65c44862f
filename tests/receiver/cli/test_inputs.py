from __future__ import annotations

import base64
import contextlib
import os
import re
import socket
import subprocess
from pathlib import Path

import pytest

from receiver.cli import inputs
from receiver.cli.inputs import InputError, read_image, resolve_params, sniff
from tests.receiver.cli.bounded_cli import run_cli

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 32
JPEG = b"\xff\xd8\xff\xe0" + b"\0" * 32
WEBP = b"RIFF\0\0\0\0WEBPVP8 " + b"\0" * 16
GIF = b"GIF89a" + b"\0" * 16


@pytest.mark.parametrize(("data", "kind"), [(PNG, "image/png"), (JPEG, "image/jpeg"), (WEBP, "image/webp"),
                                            (GIF, "image/gif"), (b"hello world", None), (b"", None)])
def test_sniff_by_magic_bytes(data: bytes, kind: str | None) -> None:
    assert sniff(data) == kind


def test_bfl_gets_raw_base64_and_replicate_a_data_uri(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(PNG)
    bfl = resolve_params({"prompt": "p", "input_image": "@a.png", "seed": 1}, shape="bfl", base_dir=tmp_path)
    assert base64.b64decode(bfl["input_image"]) == PNG and bfl["seed"] == 1 and bfl["prompt"] == "p"
    rep = resolve_params({"image": f"@{tmp_path / 'a.png'}"}, shape="replicate")
    assert rep["image"].startswith("data:image/png;base64,")
    assert base64.b64decode(rep["image"].split(",", 1)[1]) == PNG


def test_literal_at_escape_and_non_image_field(tmp_path: Path) -> None:
    assert resolve_params({"prompt": "@@home"}, shape="bfl") == {"prompt": "@home"}
    with pytest.raises(InputError, match="prompt: takes no image"):
        resolve_params({"prompt": "@x.png"}, shape="bfl")


def test_missing_directory_and_non_image_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="input_image: no such file"):
        resolve_params({"input_image": "@nope.png"}, shape="bfl", base_dir=tmp_path)
    with pytest.raises(InputError, match=r"not a regular file \(a directory\)"):
        read_image(tmp_path, field="image", shape="bfl")
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(InputError, match="not a PNG, JPEG, WebP or GIF"):
        read_image(tmp_path / "notes.txt", field="mask", shape="bfl")


def test_size_limits_per_provider(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    big = tmp_path / "big.jpg"
    big.write_bytes(JPEG + b"\0" * 2000)
    monkeypatch.setattr(inputs, "REPLICATE_DATA_URI_LIMIT", 1000)
    monkeypatch.setattr(inputs, "BFL_IMAGE_LIMIT", 1500)
    with pytest.raises(InputError, match="host the file"):
        read_image(big, field="image", shape="replicate")
    with pytest.raises(InputError, match="over the"):
        read_image(big, field="image", shape="bfl")
    monkeypatch.setattr(inputs, "BFL_IMAGE_LIMIT", 5000)
    monkeypatch.setattr(inputs, "BFL_BODY_LIMIT", 3000)
    with pytest.raises(InputError, match="add up to"):
        resolve_params({"input_image": f"@{big}", "input_image_2": f"@{big}"}, shape="bfl")


# -- what is opened and how much is read (security review, issue 19, findings 3 and 4) -----------

def cli_env(tmp_path: Path) -> dict[str, str]:
    return {"FLUXHOOK_DB": str(tmp_path / "l.db"), "FLUXHOOK_RESULTS": str(tmp_path / "results")}


def submit(tmp_path: Path, value: str) -> subprocess.CompletedProcess[str]:
    return run_cli("submit", "--provider", "bfl", "--model", "flux-kontext-pro", "--prompt", "p",
                   "--param", f"input_image={value}", env=cli_env(tmp_path))


def test_dev_zero_is_refused_before_reading(tmp_path: Path) -> None:
    # Its stat size is 0, so a size check by stat let it through and it was read until MemoryError.
    ran = submit(tmp_path, "@/dev/zero")
    assert ran.returncode == 2, ran.stderr
    assert ("input_image: '/dev/zero' is not a regular file (a character device)" in ran.stderr
            and "Traceback" not in ran.stderr), ran.stderr
    (tmp_path / "zero.png").symlink_to("/dev/zero")  # through a symlink: what is opened is checked
    ran = submit(tmp_path, f"@{tmp_path / 'zero.png'}")
    assert ran.returncode == 2 and "zero.png' is not a regular file (a character device)" in ran.stderr, ran.stderr


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    # Nobody writes to it: opening it for reading (blocking) would wait for a writer forever.
    os.mkfifo(tmp_path / "pipe.png")
    ran = submit(tmp_path, f"@{tmp_path / 'pipe.png'}")
    assert ran.returncode == 2, ran.stderr
    assert f"input_image: '{tmp_path / 'pipe.png'}' is not a regular file (a FIFO)" in ran.stderr, ran.stderr


def test_other_non_regular_files_are_named(tmp_path: Path) -> None:
    with contextlib.closing(socket.socket(socket.AF_UNIX)) as sock:
        sock.bind(str(tmp_path / "s.png"))
        for check in (read_image, inputs.check_image):
            with pytest.raises(InputError, match=r"image: '.*s\.png' is not a regular file \(a socket\)"):
                check(tmp_path / "s.png", field="image", shape="bfl")


def test_a_symlink_to_an_image_is_read(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(PNG)
    (tmp_path / "link.png").symlink_to(tmp_path / "a.png")
    assert read_image(tmp_path / "link.png", field="image", shape="bfl") == (PNG, "image/png")


def bytes_read_by_this_thread() -> tuple[int, int]:
    """(this thread's `rchar` before this read, the bytes this read took): Linux per-thread I/O counts."""
    with open("/proc/thread-self/io", "rb", buffering=0) as fp:
        text = fp.read()
    found = re.search(rb"^rchar: (\d+)$", text, re.MULTILINE)
    assert found is not None, text
    return int(found[1]), len(text)


def test_a_file_over_the_limit_is_refused_after_at_most_limit_plus_one_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # /proc files are regular files whose stat size is 0 whatever they hold (as a file still being
    # written can be larger than its stat said): only a bounded read keeps the limit.
    monkeypatch.setattr(inputs, "BFL_IMAGE_LIMIT", 100)
    maps = Path("/proc/self/maps")
    assert maps.stat().st_size == 0 and len(maps.read_bytes()) > 1000
    before, own = bytes_read_by_this_thread()
    with pytest.raises(InputError, match=r"image: '/proc/self/maps' is over the 100 bytes limit"):
        read_image(maps, field="image", shape="bfl")
    after, _ = bytes_read_by_this_thread()
    assert after - before - own <= 101
    # check_image reads the first bytes only; here they are no image.
    with pytest.raises(InputError, match="not a PNG, JPEG, WebP or GIF"):
        inputs.check_image(maps, field="image", shape="bfl")


def test_check_params_reads_no_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a.png").write_bytes(PNG + b"\0" * 100_000)
    params = {"prompt": "p", "input_image": "@a.png", "input_image_2": "@a.png"}
    before, own = bytes_read_by_this_thread()
    found = inputs.check_params(params, shape="bfl", base_dir=tmp_path)
    after, _ = bytes_read_by_this_thread()
    assert after - before - own <= 2 * 16
    assert found["input_image"] == inputs.ImageFile(tmp_path / "a.png", len(PNG) + 100_000, "image/png")
    monkeypatch.setattr(inputs, "BFL_BODY_LIMIT", 150_000)
    with pytest.raises(InputError, match=r"input_image_2: the images of this request add up to 0\.2 MB"):
        inputs.check_params(params, shape="bfl", base_dir=tmp_path)
