from __future__ import annotations

import base64
from pathlib import Path

import pytest

from receiver.cli import inputs
from receiver.cli.inputs import InputError, read_image, resolve_params, sniff

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
    with pytest.raises(InputError, match="is a directory"):
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
