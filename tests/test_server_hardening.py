"""The real server under hostile clients: absurd samples, aborted and stalled uploads, garbage that must not
show object addresses; spoken to over HTTP, WebSocket and raw sockets."""
from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import REPO
from tests.test_server import (STREAM_START, assert_json_error, free_port, multipart, post_form, request,
                               wait_for_health, wav_bytes)
from tests.tiny_model import SR, add_content_encoder, save_model, tone

pytestmark = pytest.mark.shared

TIMEOUT = 1.5  # --header_timeout and --body_timeout of the server under test, in seconds


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The real server with short stall timeouts, its log in a file; yields ((host, port), log path)."""
    root = tmp_path_factory.mktemp("hardened_server")
    save_model(root)
    add_content_encoder(root)
    port = free_port()
    log_path = root / "server.log"
    log = log_path.open("w")
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, str(REPO / "flask_api.py"), "-m", "G_1.pth", "-c", "config.json", "--name", "tiny",
         "-d", "cpu", "--port", str(port), "--header_timeout", str(TIMEOUT), "--body_timeout", str(TIMEOUT)],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_health(process, port, log_path)
        yield ("127.0.0.1", port), log_path
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def lines_after(log: Path, start: int, expected: str, count: int, wait: float = 10.0) -> list[str]:
    """The log's lines past byte `start`, once `count` of them hold `expected` (or `wait` seconds passed)."""
    deadline = time.monotonic() + wait
    while True:
        lines = log.read_bytes()[start:].decode(errors="replace").splitlines()
        if sum(expected in line for line in lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


def closed_within(sock: socket.socket, seconds: float) -> float:
    """Seconds until the server closes `sock` (reading b"" or a reset); fails after `seconds`."""
    started = time.monotonic()
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    except socket.timeout:
        pytest.fail(f"the server kept the connection open for {seconds} s")
    return time.monotonic() - started


def partial_upload(address) -> socket.socket:
    """A socket that has sent the headers of a 1000000-byte /api/convert upload and 20000 bytes of it."""
    body, content_type = multipart({"speaker": "alto"}, {"audio": wav_bytes(tone(3.0), SR)})
    sock = socket.create_connection(address)
    sock.sendall(f"POST /api/convert HTTP/1.1\r\nHost: {address[0]}\r\nContent-Type: {content_type}\r\n"
                 "Content-Length: 1000000\r\n\r\n".encode() + body[:20000])
    return sock


# ----- absurd samples -------------------------------------------------------------------------------

def test_the_stream_refuses_huge_samples_as_uploads_are_refused(served):
    """Finite float32 samples of 1e38 overflow once squared: the stream used to answer NaN for them."""
    from websockets.sync.client import connect

    address, _ = served
    huge = np.full(2205, 1e38, dtype="<f4")
    with connect(f"ws://{address[0]}:{address[1]}/api/stream", max_size=None) as websocket:
        websocket.send(json.dumps(STREAM_START))
        assert "latency_samples" in json.loads(websocket.recv(timeout=120))
        websocket.send((tone(0.1, 22050) * 4).astype("<f4").tobytes())  # loud, but audio: converted
        assert np.isfinite(np.frombuffer(websocket.recv(timeout=120), dtype="<f4")).all()
        websocket.send(huge.tobytes())
        reply = websocket.recv(timeout=120)
    assert isinstance(reply, str), "a block of 1e38 was converted: " + str(np.frombuffer(reply, dtype="<f4")[:4])
    assert json.loads(reply)["error"] == ("a block holds samples of magnitude up to 1e+38; audio lies within "
                                          "-1..1 and at most 1000 is accepted")
    status, headers, body = post_form(address, "/api/convert", {}, {"audio": wav_bytes(huge, 22050, "FLOAT")})
    assert assert_json_error(status, headers, body, 400) == (
        "the uploaded file 'audio' holds samples of magnitude up to 1e+38; audio lies within -1..1 and at most "
        "1000 is accepted")


# ----- aborted and stalled connections --------------------------------------------------------------

def test_an_aborted_upload_is_one_warning_line(served):
    address, log = served
    start = log.stat().st_size
    for _ in range(3):
        partial_upload(address).close()
    lines = lines_after(log, start, "client went away during the upload of /api/convert", 3)
    assert sum("client went away during the upload of /api/convert" in line for line in lines) == 3, lines
    assert len(lines) <= 3 * 2 and not any("Traceback" in line for line in lines), "\n".join(lines)
    assert request(address, "GET", "/api/health")[0] == 200


def test_a_connection_that_sends_nothing_or_stops_mid_header_is_closed(served):
    address, log = served
    start = log.stat().st_size
    with socket.create_connection(address) as silent:
        assert closed_within(silent, TIMEOUT + 5) >= TIMEOUT * 0.9
    with socket.create_connection(address) as slow:
        slow.sendall(b"POST /api/convert HTTP/1.1\r\nHost: x\r\n")
        for _ in range(3):  # a byte now and then does not keep headers open past the timeout
            time.sleep(TIMEOUT / 3)
            try:
                slow.sendall(b"X")
            except OSError:
                break
        closed_within(slow, TIMEOUT + 5)
    lines = lines_after(log, start, "request headers were not complete", 1)
    assert any("no request within 1.5 s" in line for line in lines), lines
    assert any("its request headers were not complete within 1.5 s (--header_timeout)" in line for line in lines)


def test_an_upload_that_stops_mid_body_is_closed(served):
    address, log = served
    start = log.stat().st_size
    with partial_upload(address) as stalled:
        took = closed_within(stalled, TIMEOUT + 5)
    assert TIMEOUT * 0.9 <= took < TIMEOUT + 5
    lines = lines_after(log, start, "client went away", 1)
    assert any("no byte of the body of POST /api/convert arrived for 1.5 s (--body_timeout)" in line
               for line in lines), lines
    assert not any("Traceback" in line for line in lines), "\n".join(lines)


def test_slow_but_steady_uploads_and_quiet_streams_are_not_cut(served):
    """The body timeout is per byte, not per request, and a WebSocket is not held to the header timeout."""
    from websockets.sync.client import connect

    address, _ = served
    body, content_type = multipart({"speaker": "alto"}, {"audio": wav_bytes(tone(0.5), SR)})
    with socket.create_connection(address) as steady:
        steady.sendall(f"POST /api/convert HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
                       f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode())
        pieces = [body[at:at + len(body) // 4 + 1] for at in range(0, len(body), len(body) // 4 + 1)]
        for piece in pieces:  # the whole upload takes longer than the timeout; no pause does
            time.sleep(TIMEOUT / 2)
            steady.sendall(piece)
        steady.settimeout(120)
        answer = b"".join(iter(lambda: steady.recv(65536), b""))
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    with connect(f"ws://{address[0]}:{address[1]}/api/stream", max_size=None) as websocket:
        websocket.send(json.dumps(STREAM_START))
        assert "latency_samples" in json.loads(websocket.recv(timeout=120))
        time.sleep(TIMEOUT * 2)
        websocket.send(tone(0.1, 22050).astype("<f4").tobytes())
        assert len(websocket.recv(timeout=120)) == 2205 * 4


# ----- no object addresses --------------------------------------------------------------------------

def malformed_caf() -> bytes:
    """A CAF whose data chunk claims 2**40 bytes: soundfile's error names the in-memory file by its address."""
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(1000, dtype=np.float32), 8000, format="CAF", subtype="PCM_16")
    data = bytearray(buffer.getvalue())
    at = data.find(b"data")
    data[at + 4:at + 12] = (2 ** 40).to_bytes(8, "big")
    return bytes(data)


@pytest.mark.parametrize("garbage", [malformed_caf(), b"RIFF\x00\x00\x00\x00WAVEfmt " + bytes(40), b"\x00" * 64])
def test_replies_to_garbage_never_show_an_object_address(served, garbage):
    from websockets.sync.client import connect

    address, _ = served
    replies = []
    for path, field, fields in (("/api/convert", "audio", {}), ("/wav2wav", "audio", {}),
                                ("/voiceChangeModel", "sample", {"sampleRate": "44100"})):
        status, headers, body = post_form(address, path, fields, {field: garbage})
        replies.append(assert_json_error(status, headers, body, 400, "not audio soundfile can read"))
    with connect(f"ws://{address[0]}:{address[1]}/api/stream", max_size=None) as websocket:
        websocket.send(garbage)
        replies.append(json.loads(websocket.recv(timeout=120))["error"])
    with connect(f"ws://{address[0]}:{address[1]}/api/stream", max_size=None) as websocket:
        websocket.send(json.dumps(STREAM_START))
        websocket.recv(timeout=120)
        websocket.send(garbage[:-1] if len(garbage) % 4 == 0 else garbage)
        replies.append(json.loads(websocket.recv(timeout=120))["error"])
    for reply in replies:
        assert "0x" not in reply and "object at" not in reply and "\n" not in reply, reply
