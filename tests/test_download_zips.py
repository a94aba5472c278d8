"""Pretrained zips without a published sha256 are unpacked only after their members are checked: names, links
and declared sizes within caps, and no member written past what it declares."""
from __future__ import annotations

import io
import struct
import zipfile
from pathlib import Path

import pytest

import core.download as download
from core.download import extract_members, fetch_pretrained
from core.errors import SvcError
from tests.conftest import captured_logs

MB = 1024 * 1024


def zip_of(members: dict[str, bytes | int], mode: int | None = None) -> bytes:
    """A deflated zip; a member given as an int is that many zero bytes, written in pieces (a bomb in kB)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            if mode is not None:
                info.external_attr = mode << 16
            with archive.open(info, "w", force_zip64=isinstance(data, int)) as out:
                for _ in range(data // MB if isinstance(data, int) else 0):
                    out.write(bytes(MB))
                if not isinstance(data, int):
                    out.write(data)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    """300 MB of zeros in well under a megabyte."""
    path = tmp_path_factory.mktemp("bomb") / "rmvpe.zip"
    path.write_bytes(zip_of({"model.pt": 300 * MB}))
    return path


def test_a_small_zip_declaring_hundreds_of_mb_is_refused_before_writing(bomb, tmp_path, monkeypatch):
    assert bomb.stat().st_size < MB
    monkeypatch.setattr(download, "MAX_MEMBER_BYTES", 100 * MB)
    with pytest.raises(SvcError) as caught:
        extract_members(bomb, {"model.pt": tmp_path / "rmvpe.pt"})
    assert str(caught.value) == (f"{bomb} was not unpacked: its member 'model.pt' declares {300 * MB} bytes, more "
                                 f"than the {100 * MB} a pretrained file may have; is it the published archive?")
    assert list(tmp_path.iterdir()) == []


def test_members_within_the_member_cap_but_over_the_total_are_refused(tmp_path, monkeypatch):
    archive = tmp_path / "nsf_hifigan.zip"
    archive.write_bytes(zip_of({f"part{index}": 3 * MB for index in range(4)} | {"model": b"weights"}))
    monkeypatch.setattr(download, "MAX_MEMBER_BYTES", 4 * MB)
    monkeypatch.setattr(download, "MAX_UNPACKED_BYTES", 10 * MB)
    target = tmp_path / "out"
    with pytest.raises(SvcError, match=f"its 5 members declare {12 * MB + 7} bytes in all, more than the "
                                       f"{10 * MB} a pretrained archive"):
        extract_members(archive, {"model": target / "model"})
    assert not target.exists()


def test_a_member_holding_more_than_it_declares_is_not_written(tmp_path):
    """The central directory says 10 bytes; the data inflates to 100000: at most 10 are read, then refused."""
    data = bytearray(zip_of({"model.pt": b"x" * 100_000}))
    central = data.rfind(b"PK\x01\x02")
    data[central + 24:central + 28] = struct.pack("<I", 10)  # the member's uncompressed size
    archive = tmp_path / "rmvpe.zip"
    archive.write_bytes(bytes(data))
    with pytest.raises(SvcError) as caught:
        extract_members(archive, {"model.pt": tmp_path / "rmvpe.pt"})
    message = str(caught.value)
    assert message.startswith(f"{archive} could not be unpacked: its member 'model.pt' is damaged") and "\n" not in message
    assert [path.name for path in tmp_path.iterdir()] == ["rmvpe.zip"]


@pytest.mark.parametrize("members, mode", [
    ({"/abs/model.pt": b"x"}, None),
    ({"../model.pt": b"x"}, None),
    ({"a/../../model.pt": b"x"}, None),
    ({"model.pt": b"/etc/passwd"}, 0o120777),  # a symbolic link
])
def test_names_leaving_the_folder_and_links_are_refused(tmp_path, members, mode):
    archive = tmp_path / "rmvpe.zip"
    archive.write_bytes(zip_of(members, mode))
    with pytest.raises(SvcError, match=f"^{archive} was not unpacked: its member .* would be written outside the "
                                       "target folder or is a link$"):
        extract_members(archive, {"model.pt": tmp_path / "rmvpe.pt"})
    assert not (tmp_path / "rmvpe.pt").exists()


def test_an_archive_without_a_published_sha256_is_unpacked_as_unverified(tmp_path):
    pretrain = tmp_path / "pretrain"
    pretrain.mkdir()
    (pretrain / "rmvpe.zip").write_bytes(zip_of({"rmvpe/model.pt": b"rmvpe weights"}))
    with captured_logs("WARNING") as warnings:
        result = fetch_pretrained(["rmvpe"], pretrain, timeout=1)
    assert result.fetched == ["rmvpe.pt"] and (pretrain / "rmvpe.pt").read_bytes() == b"rmvpe weights"
    assert warnings == ["rmvpe.zip (RMVPE) is unverified: no sha256 is published for it; only its member names, "
                        "types and sizes are checked before it is unpacked"]

