"""Download helpers, download_pretrained.py and the demo's encoder resolution, against a local HTTP server."""
from __future__ import annotations

import functools
import hashlib
import io
import socket
import threading
import zipfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import torch

from demo import is_random_placeholder, resolve_demo_encoder
from core.download import (ChecksumError, DownloadError, download, extract_members, fetch_pretrained,
                              files_for, is_safe_member, mirror_url)
from core.errors import ConfigError, SvcError, UnsafeFileError
from core.pretrained import DirectDownload, direct_download
from tests.conftest import ASSETS, SHARED, captured_logs, run_script
from vencoder.whisper import load_audio_encoder

PAYLOAD = bytes(range(256)) * 1500  # 384000 bytes
BASE_URL_PATH = urlsplit(direct_download("base.pt").url).path


class Handler(SimpleHTTPRequestHandler):
    """Serves a folder; /short promises 1000 bytes and sends 10."""

    def do_GET(self):
        if self.path == "/short":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"0123456789")
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, format, *args):
        pass


class Server:
    def __init__(self, root: Path):
        self.root = root
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def put(self, url_path: str, data: bytes) -> str:
        """Serve `data` at `url_path`; return its full URL."""
        path = self.root / url_path.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return self.url + url_path


@pytest.fixture
def server(tmp_path):
    srv = Server(tmp_path / "www")
    srv.root.mkdir()
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


@pytest.fixture
def closed_url() -> str:
    """A URL on a local port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/main/file.pt"


@pytest.fixture
def logs():
    with captured_logs("INFO") as messages:
        yield messages


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# download()

def test_download_verifies_full_hash_and_prefix(server, tmp_path):
    url = server.put("/a/model.pt", PAYLOAD)
    dest = tmp_path / "out" / "model.pt"
    assert download(url, dest, sha256=sha256(PAYLOAD)) == dest
    assert dest.read_bytes() == PAYLOAD
    dest.unlink()
    download(url, dest, sha256_prefix=sha256(PAYLOAD)[:8].upper())
    assert dest.read_bytes() == PAYLOAD
    assert leftovers(dest.parent) == ["model.pt"]


def test_hash_mismatch_leaves_no_file(server, tmp_path):
    url = server.put("/a/model.pt", PAYLOAD)
    dest = tmp_path / "out" / "model.pt"
    wrong = "0" * 64
    with pytest.raises(ChecksumError) as info:
        download(url, dest, sha256=wrong)
    assert wrong in str(info.value) and sha256(PAYLOAD) in str(info.value) and url in str(info.value)
    assert leftovers(dest.parent) == []
    with pytest.raises(ChecksumError, match="expected 0d54a1f4"):
        download(url, dest, sha256_prefix="0d54a1f4")
    assert leftovers(dest.parent) == []


def test_failed_download_keeps_the_old_file(server, tmp_path):
    url = server.put("/a/model.pt", PAYLOAD)
    dest = tmp_path / "model.pt"
    dest.write_bytes(b"old")
    with pytest.raises(ChecksumError):
        download(url, dest, sha256="1" * 64)
    assert dest.read_bytes() == b"old"
    assert leftovers(tmp_path) == ["model.pt", "www"]


def test_http_404_is_a_clear_error(server, tmp_path):
    url = server.url + "/missing/model.pt"
    dest = tmp_path / "model.pt"
    with pytest.raises(DownloadError) as info:
        download(url, dest)
    assert str(info.value) == (f"cannot download {url}: HTTP 404 File not found; "
                               f"download it yourself and put it at {dest}")
    assert not dest.exists()


def test_unreachable_host_is_a_clear_error(closed_url, tmp_path):
    dest = tmp_path / "model.pt"
    with pytest.raises(DownloadError) as info:
        download(closed_url, dest, timeout=5)
    assert str(info.value) == (f"cannot download {closed_url}: connection refused; "
                               f"download it yourself and put it at {dest}")
    assert leftovers(tmp_path) == []


def test_short_read_is_an_error(server, tmp_path):
    with pytest.raises(DownloadError, match="cannot download .*/short"):
        download(server.url + "/short", tmp_path / "x.pt")
    assert leftovers(tmp_path) == ["www"]


def test_mirror_url_keeps_the_path():
    url = direct_download("base.pt").url
    assert mirror_url(url, None) == url
    assert mirror_url(url, "http://127.0.0.1:9/") == "http://127.0.0.1:9" + BASE_URL_PATH
    assert mirror_url(url, "https://m.example/pre") == "https://m.example/pre" + BASE_URL_PATH


# zips

@pytest.mark.parametrize("name, safe", [("model.pt", True), ("a/b/model", True), ("../x", False),
                                        ("a/../../x", False), ("/etc/x", False), ("..\\x", False),
                                        ("C:/x", False), (".", False), ("", False)])
def test_is_safe_member(name, safe):
    assert is_safe_member(name) is safe


def test_extract_members_takes_only_wanted_files(tmp_path):
    archive = tmp_path / "a.zip"
    archive.write_bytes(make_zip({"nsf_hifigan/model": b"weights", "nsf_hifigan/config.json": b"{}",
                                  "nsf_hifigan/NOTICE.txt": b"n", "model.pt": b"rmvpe"}))
    out = tmp_path / "pretrain"
    written = extract_members(archive, {"model": out / "nsf_hifigan" / "model", "config.json": out / "c.json",
                                        "model.pt": out / "rmvpe.pt"})
    assert written == [out / "nsf_hifigan" / "model", out / "c.json", out / "rmvpe.pt"]
    assert (out / "nsf_hifigan" / "model").read_bytes() == b"weights"
    assert (out / "c.json").read_bytes() == b"{}"
    assert (out / "rmvpe.pt").read_bytes() == b"rmvpe"
    assert sorted(p.name for p in out.rglob("*")) == ["c.json", "model", "nsf_hifigan", "rmvpe.pt"]


def test_extract_refuses_path_traversal(tmp_path):
    archive = tmp_path / "a.zip"
    archive.write_bytes(make_zip({"model.pt": b"ok", "../evil.txt": b"x"}))
    out = tmp_path / "pretrain"
    with pytest.raises(UnsafeFileError, match=r"'\.\./evil\.txt'"):
        extract_members(archive, {"model.pt": out / "rmvpe.pt"})
    assert not out.exists() and not (tmp_path.parent / "evil.txt").exists()


def test_extract_missing_or_ambiguous_member(tmp_path):
    archive = tmp_path / "a.zip"
    archive.write_bytes(make_zip({"a/model.pt": b"1", "b/model.pt": b"2"}))
    with pytest.raises(SvcError, match="has no member named 'config.json'"):
        extract_members(archive, {"config.json": tmp_path / "c.json"})
    with pytest.raises(SvcError, match="has several members named 'model.pt'"):
        extract_members(archive, {"model.pt": tmp_path / "m.pt"})
    assert extract_members(archive, {"b/model.pt": tmp_path / "m.pt"}) == [tmp_path / "m.pt"]
    assert (tmp_path / "m.pt").read_bytes() == b"2"


# names and the table

def test_names_map_to_pretrain_files():
    assert files_for("whisper-ppg-base") == ("base.pt",)
    assert files_for("nsf_hifigan") == ("nsf_hifigan/model", "nsf_hifigan/config.json")
    assert set(files_for("all-available")) == {"medium.pt", "large-v2.pt", "small.pt", "base.pt",
                                               "hubert-soft-0d54a1f4.pt", "rmvpe.pt", "nsf_hifigan/model",
                                               "nsf_hifigan/config.json"}
    with pytest.raises(ConfigError, match="unknown name 'nope'"):
        files_for("nope")


def test_whisper_urls_carry_their_sha256():
    for file in ("medium.pt", "large-v2.pt", "small.pt", "base.pt"):
        entry = direct_download(file)
        assert entry.url.split("/")[-2] == entry.sha256 and len(entry.sha256) == 64
        assert entry.url.endswith("/" + file)
    soft = direct_download("hubert-soft-0d54a1f4.pt")
    assert soft.sha256_prefix == "0d54a1f4" and soft.sha256 is None


def test_sha256_override_needs_one_download(tmp_path):
    with pytest.raises(ConfigError, match="exactly one download"):
        fetch_pretrained(["whisper-ppg-base", "rmvpe"], tmp_path, sha256_override="ab" * 32)
    with pytest.raises(ConfigError, match="8 to 64 hex digits"):
        fetch_pretrained(["whisper-ppg-base"], tmp_path, sha256_override="xyz")


# download_pretrained.py

def test_script_refuses_a_file_that_does_not_match_the_published_hash(server, tmp_path):
    server.put(BASE_URL_PATH, PAYLOAD)
    result = run_script("download_pretrained.py", "whisper-ppg-base", "--pretrain_dir", tmp_path / "pretrain",
                        "--base_url", server.url, check=False)
    assert result.returncode == 1
    assert "wrong sha256: expected ed3a0b6b" in result.stderr and sha256(PAYLOAD) in result.stderr
    assert "could not download base.pt" in result.stderr and "Traceback" not in result.stderr
    assert leftovers(tmp_path / "pretrain") == []


def test_script_downloads_skips_and_repairs(server, tmp_path, closed_url):
    server.put(BASE_URL_PATH, PAYLOAD)
    pretrain = tmp_path / "pretrain"
    args = ("whisper-ppg-base", "--pretrain_dir", pretrain, "--sha256", sha256(PAYLOAD))
    run_script("download_pretrained.py", *args, "--base_url", server.url)
    assert (pretrain / "base.pt").read_bytes() == PAYLOAD
    # present and matching: no download (the mirror is unreachable now)
    unreachable = closed_url.rsplit("/main/", 1)[0]
    result = run_script("download_pretrained.py", *args, "--base_url", unreachable)
    assert "sha256 ok, skipped" in result.stderr
    # damaged: downloaded again, with a warning
    (pretrain / "base.pt").write_bytes(PAYLOAD[:-1] + b"x")
    result = run_script("download_pretrained.py", *args, "--base_url", server.url)
    assert "does not match the published sha256" in result.stderr
    assert (pretrain / "base.pt").read_bytes() == PAYLOAD
    # another file there and no network: the file stays, the run says what happened
    (pretrain / "base.pt").write_bytes(b"encoder-only copy")
    result = run_script("download_pretrained.py", *args, "--base_url", unreachable, check=False)
    assert result.returncode == 1 and "connection refused" in result.stderr
    assert "kept the existing base.pt" in result.stderr
    assert (pretrain / "base.pt").read_bytes() == b"encoder-only copy"
    assert leftovers(pretrain) == ["base.pt"]


def test_script_unpacks_zips_and_explains_manual_files(server, tmp_path, monkeypatch):
    server.put("/yxlllc/RMVPE/releases/download/230917/rmvpe.zip", make_zip({"model.pt": b"rmvpe weights"}))
    server.put("/openvpi/vocoders/releases/download/nsf-hifigan-v1/nsf_hifigan_20221211.zip",
               make_zip({"nsf_hifigan/model": b"vocoder", "nsf_hifigan/config.json": b"{}"}))
    pretrain = tmp_path / "pretrain"
    monkeypatch.setenv("SVC_DOWNLOAD_MIRROR", server.url)  # the mirror from the environment this time
    result = run_script("download_pretrained.py", "rmvpe", "nsf_hifigan", "vec768l12", "--pretrain_dir", pretrain,
                        check=False)
    assert (pretrain / "rmvpe.pt").read_bytes() == b"rmvpe weights"
    assert (pretrain / "nsf_hifigan" / "model").read_bytes() == b"vocoder"
    assert (pretrain / "nsf_hifigan" / "config.json").read_bytes() == b"{}"
    assert sorted(p.name for p in pretrain.rglob("*")) == ["config.json", "model", "nsf_hifigan", "rmvpe.pt"]
    assert result.returncode == 1
    assert "lj1995/VoiceConversionWebUI" in result.stderr
    assert f"put it at {pretrain / 'checkpoint_best_legacy_500.pt'}" in result.stderr
    assert "still missing checkpoint_best_legacy_500.pt (in" in result.stderr.splitlines()[-1]
    assert "could not download" not in result.stderr


def test_offline_zip_is_taken_from_the_place_the_message_names(tmp_path, closed_url):
    """Offline, a zip download says where to save it by hand: a place that survives the run (not the
    temporary download folder), from which the next run unpacks it and which it leaves alone."""
    pretrain = tmp_path / "pretrain"
    unreachable = closed_url.rsplit("/main/", 1)[0]
    result = run_script("download_pretrained.py", "rmvpe", "--pretrain_dir", pretrain, "--base_url", unreachable,
                        check=False)
    assert result.returncode == 1 and "connection refused" in result.stderr
    saved_zip = pretrain / "rmvpe.zip"
    assert f"put it at {saved_zip} (this script unpacks it from there)" in result.stderr
    assert ".download-" not in result.stderr and leftovers(pretrain) == []
    saved_zip.write_bytes(make_zip({"rmvpe/model.pt": b"rmvpe weights"}))
    result = run_script("download_pretrained.py", "rmvpe", "--pretrain_dir", pretrain, "--base_url", unreachable)
    assert f"unpacking RMVPE from {saved_zip}" in result.stderr
    assert (pretrain / "rmvpe.pt").read_bytes() == b"rmvpe weights"
    assert leftovers(pretrain) == ["rmvpe.pt", "rmvpe.zip"]


def test_script_list_and_bad_name(tmp_path):
    (tmp_path / "small.pt").write_bytes(b"x")
    result = run_script("download_pretrained.py", "--list", "--pretrain_dir", tmp_path)
    lines = result.stdout.splitlines()
    assert lines[lines.index("whisper-ppg-small") + 1].startswith(f"  {tmp_path / 'small.pt'} [present] direct")
    assert lines[lines.index("fcpe") + 1].startswith(f"  {tmp_path / 'fcpe.pt'} [missing] by hand")
    bad = run_script("download_pretrained.py", "nope", "--pretrain_dir", tmp_path, check=False)
    assert bad.returncode == 1 and "unknown name 'nope'" in bad.stderr and "Traceback" not in bad.stderr


# resolve_demo_encoder

def test_demo_encoder_present_file_wins(tmp_path, closed_url):
    (tmp_path / "base.pt").write_bytes(b"user's own file")
    remote = DirectDownload("test", closed_url, file="base.pt")
    name, path, source = resolve_demo_encoder(tmp_path, tmp_path / "no_shared", remote=remote)
    assert (name, path) == ("whisper-ppg-base", tmp_path / "base.pt")
    assert "already present" in source
    assert path.read_bytes() == b"user's own file"


def test_demo_encoder_downloads(server, tmp_path):
    url = server.put("/whisper/base.pt", PAYLOAD)
    remote = DirectDownload("test", url, file="base.pt", sha256=sha256(PAYLOAD))
    name, path, source = resolve_demo_encoder(tmp_path / "pretrain", tmp_path / "no_shared", remote=remote)
    assert path == tmp_path / "pretrain" / "base.pt" and path.read_bytes() == PAYLOAD
    assert source == f"OpenAI Whisper base, downloaded from {url} (sha256 checked)"


def test_demo_encoder_falls_back_to_the_shared_copy(tmp_path, closed_url, logs):
    shared = tmp_path / "shared"
    (shared / "assets" / "whisper").mkdir(parents=True)
    (shared / "assets" / "whisper" / "base_encoder.pt").write_bytes(b"encoder only")
    remote = DirectDownload("test", closed_url, file="base.pt", sha256="0" * 64)
    name, path, source = resolve_demo_encoder(tmp_path / "pretrain", shared, remote=remote, timeout=5)
    assert path.read_bytes() == b"encoder only"
    assert str(shared / "assets" / "whisper" / "base_encoder.pt") in source
    assert any("no network: could not fetch Whisper base" in m and "connection refused" in m for m in logs)


def test_demo_encoder_random_last_resort_then_upgraded(tmp_path, logs):
    pretrain = tmp_path / "pretrain"
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    name, path, source = resolve_demo_encoder(pretrain, tmp_path / "no_shared", allow_download=False)
    assert torch.rand(1) == expected_next  # the global random state is left alone
    assert "RANDOM weights (seed 0)" in source and "will not sound like the target voice" in source
    assert any("RANDOM SPEECH ENCODER" in m for m in logs)
    assert is_random_placeholder(path)
    encoder = load_audio_encoder(path)
    assert (encoder.dims.n_audio_state, encoder.dims.n_audio_layer, encoder.dims.n_mels) == (512, 6, 80)
    with torch.inference_mode():
        features = encoder(torch.randn(1, 80, 100))  # [1, 50, 512]
    assert features.shape == (1, 50, 512) and torch.isfinite(features).all()
    # the placeholder is not mistaken for a real file: kept while nothing better exists, then replaced
    mtime = path.stat().st_mtime_ns
    assert "RANDOM" in resolve_demo_encoder(pretrain, tmp_path / "no_shared", allow_download=False)[2]
    assert path.stat().st_mtime_ns == mtime
    shared = tmp_path / "shared"
    (shared / "assets" / "whisper").mkdir(parents=True)
    (shared / "assets" / "whisper" / "base_encoder.pt").write_bytes(b"encoder only")
    assert "copied to" in resolve_demo_encoder(pretrain, shared, allow_download=False)[2]
    assert path.read_bytes() == b"encoder only"


@pytest.mark.shared
def test_demo_encoder_real_shared_copy_loads(tmp_path):
    assert (ASSETS / "whisper" / "base_encoder.pt").is_file()
    name, path, source = resolve_demo_encoder(tmp_path, SHARED, allow_download=False)
    assert not is_random_placeholder(path)
    dims = load_audio_encoder(path).dims
    assert (dims.n_audio_state, dims.n_audio_layer) == (512, 6)
