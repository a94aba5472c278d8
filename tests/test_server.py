"""flask_api.py started as a user would, on a tiny random-weight model, and spoken to over HTTP and WebSocket."""
from __future__ import annotations

import http.client
import io
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import REPO, run_script
from tests.tiny_model import SR, add_content_encoder, save_model, tone

pytestmark = pytest.mark.shared

MAX_UPLOAD_MB = 1
MAX_SECONDS = 20
STARTUP_SECONDS = 180


def wav_bytes(audio: np.ndarray, sr: int, subtype: str = "PCM_16") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, audio, sr, format="WAV", subtype=subtype)
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """G_1.pth + config.json (speakers alto, tenor) and pretrain/ with the tiny ContentVec."""
    root = tmp_path_factory.mktemp("server")
    save_model(root)
    add_content_encoder(root)
    return root


@pytest.fixture(scope="module")
def server(workdir):
    """The real server in a subprocess on a free loopback port; yields (host, port)."""
    port = free_port()
    log = (workdir / "server.log").open("w")
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, str(REPO / "flask_api.py"), "-m", "G_1.pth", "-c", "config.json", "--name", "tiny",
         "-m", "G_1.pth", "-c", "config.json", "-d", "cpu", "--port", str(port), "--max_upload_mb", str(MAX_UPLOAD_MB), "--max_seconds", str(MAX_SECONDS)],
        cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_health(process, port, workdir / "server.log")
        yield "127.0.0.1", port
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def wait_for_health(process: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the server exited {process.returncode}:\n{log.read_text()}")
        try:
            if request(("127.0.0.1", port), "GET", "/api/health")[0] == 200:
                return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"the server did not answer within {STARTUP_SECONDS} s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def svc(workdir):
    """The same model loaded in this process, for the expected results."""
    from inference.svc import Svc

    return Svc(workdir / "G_1.pth", workdir / "config.json", device="cpu", pretrain_dir=workdir / "pretrain")


# ----- HTTP helpers ---------------------------------------------------------------------------------

def request(address, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection(*address, timeout=300)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def multipart(fields: dict[str, str], files: dict[str, bytes]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, data in files.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}.wav"\r\n'
                     f'Content-Type: audio/wav\r\n\r\n'.encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def post_form(address, path: str, fields: dict[str, str], files: dict[str, bytes]):
    body, content_type = multipart(fields, files)
    return request(address, "POST", path, body, {"Content-Type": content_type})


def read_wav(data: bytes) -> tuple[np.ndarray, int, str]:
    with sf.SoundFile(io.BytesIO(data)) as sound:
        return sound.read(dtype="float32"), sound.samplerate, sound.subtype


def expected_vst(svc, audio: np.ndarray, sr: int, trans: float, speaker: int, daw_rate: int) -> np.ndarray:
    """What /voiceChangeModel should answer, computed in this process (4.1's options: pm, noise 0.4)."""
    from core.audio import fit_length, resample
    from inference.svc import ConversionOptions

    out = svc.convert(audio, sr, ConversionOptions(speaker=speaker, trans=trans, noice_scale=0.4))
    return fit_length(resample(out, svc.target_sample, daw_rate), round(len(audio) * daw_rate / sr))


def assert_json_error(status: int, headers: dict[str, str], body: bytes, expected_status: int | tuple = 400,
                      words: str = "") -> str:
    allowed = expected_status if isinstance(expected_status, tuple) else (expected_status,)
    assert status in allowed, (status, body[:300])
    assert headers["content-type"].startswith("application/json")
    message = json.loads(body)["error"]
    assert "Traceback" not in message and words in message, message
    return message


# ----- the script -----------------------------------------------------------------------------------

def test_help_names_the_endpoints_and_limits():
    """(That --help imports no torch is checked for every script in test_registry.py.)"""
    result = run_script("flask_api.py", "--help")
    assert "/voiceChangeModel" in result.stdout and "--max_upload_mb" in result.stdout


def test_a_missing_model_is_one_clear_line(workdir):
    result = run_script("flask_api.py", "-m", "missing.pth", "-c", "config.json", "--port", str(free_port()),
                        cwd=workdir, check=False, timeout=120)
    assert result.returncode == 1 and "missing.pth" in result.stderr and "Traceback" not in result.stderr
    result = run_script("flask_api.py", "-m", "G_1.pth", "-c", "config.json", "-c", "config.json", cwd=workdir,
                        check=False, timeout=60)
    assert result.returncode == 2 and "one -c/--config_path per -m" in result.stderr
    result = run_script("flask_api.py", "-m", "G_1.pth", "-c", "config.json", "-m", "G_1.pth", "-c", "config.json",
                        cwd=workdir, check=False, timeout=120)
    assert result.returncode == 1 and "two models are named 'G_1'" in result.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = run_script("flask_api.py", "-m", "G_1.pth", "-c", "config.json", "--port", port, cwd=workdir,
                            check=False, timeout=120)
    assert result.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


# ----- the JSON API ---------------------------------------------------------------------------------

def test_health_and_models(server):
    status, _, body = request(server, "GET", "/api/health")
    assert status == 200 and json.loads(body) == {"status": "ok", "models": ["tiny", "G_1"]}
    status, _, body = request(server, "GET", "/api/models")
    listing = json.loads(body)
    assert status == 200 and listing["default"] == "tiny"
    assert [model["name"] for model in listing["models"]] == ["tiny", "G_1"]  # --name, else the file's stem
    for model in listing["models"]:
        assert model["sample_rate"] == SR and model["speakers"] == {"alto": 0, "tenor": 1}


def test_api_convert_with_options(server, svc):
    from inference.svc import ConversionOptions

    audio = tone(1.0, 22050, f0=200)
    fields = {"model": "G_1", "speaker": "tenor", "trans": "-3", "f0_predictor": "dio", "noice_scale": "0",
              "loudness_envelope_adjustment": "0.5", "slice_db": "-35", "wav_format": "flac"}
    status, headers, body = post_form(server, "/api/convert", fields, {"audio": wav_bytes(audio, 22050)})
    assert status == 200, body[:300]
    assert headers["content-type"] == "audio/flac" and headers["x-sample-rate"] == str(SR)
    assert headers["x-model"] == "G_1" and headers["x-speaker"] == "tenor"
    result, sr, _ = read_wav(body)
    expected = svc.convert(audio, 22050, ConversionOptions(speaker="tenor", trans=-3, f0_predictor="dio",
                                                           noice_scale=0, loudness_envelope_adjustment=0.5,
                                                           slice_db=-35))
    assert sr == SR and len(result) == len(expected) == SR
    np.testing.assert_allclose(result, np.clip(expected, -1, 1), atol=2e-3)


# ----- 4.1's endpoints ------------------------------------------------------------------------------

@pytest.mark.parametrize("file_rate, daw_rate", [(48000, 48000), (44100, 22050)])
def test_vst_contract(server, svc, file_rate, daw_rate):
    """4.1's field names; the reply is a 16-bit wav at sampleRate with the input's duration."""
    audio = tone(1.0, file_rate, f0=247)
    fields = {"fPitchChange": "2", "sampleRate": str(daw_rate), "sSpeakId": "1"}
    status, headers, body = post_form(server, "/voiceChangeModel", fields, {"sample": wav_bytes(audio, file_rate)})
    assert status == 200, body[:300]
    assert headers["content-type"] == "audio/wav" and "temp.wav" in headers["content-disposition"]
    result, sr, subtype = read_wav(body)
    assert sr == daw_rate and subtype == "PCM_16" and len(result) == daw_rate
    expected = expected_vst(svc, audio, file_rate, 2, 1, daw_rate)
    np.testing.assert_allclose(result, np.clip(expected, -1, 1), atol=2e-3)
    assert np.abs(result).max() > 1e-3


def test_wav2wav_takes_an_upload(server, svc):
    from inference.svc import ConversionOptions

    audio = tone(1.5, SR, f0=180)
    status, headers, body = post_form(server, "/wav2wav", {"tran": "1", "spk": "alto", "wav_format": "wav"},
                                      {"audio": wav_bytes(audio, SR, "FLOAT")})
    assert status == 200, body[:300]
    result, sr, _ = read_wav(body)
    expected = svc.convert(audio, SR, ConversionOptions(speaker="alto", trans=1))
    assert sr == SR and len(result) == len(audio)
    np.testing.assert_allclose(result, np.clip(expected, -1, 1), atol=2e-3)


def test_wav2wav_refuses_a_server_path(server, workdir):
    status, headers, body = post_form(server, "/wav2wav", {"audio_path": str(workdir / "config.json"), "tran": "0",
                                                           "spk": "0"}, {})
    message = assert_json_error(status, headers, body, 400, "upload")
    assert "audio_path" in message and "alto" not in body.decode()


def test_concurrent_clients_get_their_own_audio(server, svc):
    """8 requests at once, each a different tone and key; each answer is that request's conversion."""
    jobs = [(tone(0.8, 44100, f0=150 + 40 * index), index - 4, index % 2) for index in range(8)]

    def send(job):
        audio, trans, speaker = job
        fields = {"fPitchChange": str(trans), "sampleRate": "44100", "sSpeakId": str(speaker)}
        return post_form(server, "/voiceChangeModel", fields, {"sample": wav_bytes(audio, 44100)})

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(send, jobs))
    results = []
    for (audio, trans, speaker), (status, _, body) in zip(jobs, answers):
        assert status == 200, body[:300]
        result, _, _ = read_wav(body)
        expected = expected_vst(svc, audio, 44100, trans, speaker, 44100)
        np.testing.assert_allclose(result, np.clip(expected, -1, 1), atol=2e-3)
        results.append(result)
    assert not np.allclose(results[0], results[1], atol=1e-2)


# ----- refusals -------------------------------------------------------------------------------------

GOOD_VST = {"fPitchChange": "0", "sampleRate": "44100", "sSpeakId": "0"}


def nan_wav() -> bytes:
    audio = tone(0.5)
    audio[100] = np.nan
    return wav_bytes(audio, SR, "FLOAT")


BAD_VST = {
    "not audio": ({}, {"sample": b"this is not a wav file"}, 400, "not audio"),
    "empty file": ({}, {"sample": b""}, 400, "empty"),
    "no samples": ({}, {"sample": wav_bytes(np.zeros(0, dtype=np.float32), SR)}, 400, "no samples"),
    "NaN samples": ({}, {"sample": nan_wav()}, 400, "NaN"),
    "too long": ({}, {"sample": wav_bytes(np.zeros(8000 * (MAX_SECONDS + 1), dtype=np.float32), 8000)}, 413,
                 "--max_seconds"),
    "no sample field": ({}, {}, 400, "sample"),
    "pitch not a number": ({"fPitchChange": "high"}, None, 400, "fPitchChange"),
    "pitch NaN": ({"fPitchChange": "nan"}, None, 400, "fPitchChange"),
    "pitch out of range": ({"fPitchChange": "1000"}, None, 400, "fPitchChange"),
    "rate zero": ({"sampleRate": "0"}, None, 400, "sampleRate"),
    "rate missing": ({"sampleRate": ""}, None, 400, "sampleRate"),
    "rate not whole": ({"sampleRate": "44100.5"}, None, 400, "sampleRate"),
    "unknown speaker": ({"sSpeakId": "7"}, None, 400, "unknown speaker"),
    "speaker not a number": ({"sSpeakId": "alto"}, None, 400, "sSpeakId"),
    "unknown model": ({"model": "bass"}, None, 404, "unknown model"),
}


@pytest.mark.parametrize("case", list(BAD_VST))
def test_bad_vst_requests_get_a_json_4xx(server, case):
    fields, files, expected_status, words = BAD_VST[case]
    files = {"sample": wav_bytes(tone(0.3), SR)} if files is None else files
    status, headers, body = post_form(server, "/voiceChangeModel", {**GOOD_VST, **fields}, files)
    assert_json_error(status, headers, body, expected_status, words)


BAD_CONVERT = {
    "unknown speaker": ({"speaker": "bass"}, 400, "unknown speaker 'bass'; this model has: alto, tenor"),
    "unknown model": ({"model": "other"}, 404, "this server has: tiny, G_1"),
    "unknown f0 predictor": ({"f0_predictor": "foo"}, 400, "foo"),
    "cluster without a cluster model": ({"cluster_infer_ratio": "0.5"}, 400, "-cm"),
    "cluster ratio out of range": ({"cluster_infer_ratio": "2"}, 400, "cluster_infer_ratio"),
    "negative noise": ({"noice_scale": "-1"}, 400, "noice_scale"),
    "infinite noise": ({"noice_scale": "inf"}, 400, "noice_scale"),
    "loudness out of range": ({"loudness_envelope_adjustment": "3"}, 400, "loudness_envelope_adjustment"),
    "slice_db not a number": ({"slice_db": "loud"}, 400, "slice_db"),
    "unknown format": ({"wav_format": "xyz"}, 400, "wav_format 'xyz' is not an audio format"),
    "bad flag": ({"auto_predict_f0": "maybe"}, 400, "auto_predict_f0"),
    "server path": ({"audio_path": "/etc/passwd"}, 400, "upload"),
}


@pytest.mark.parametrize("case", list(BAD_CONVERT))
def test_bad_api_requests_get_a_json_4xx(server, case):
    fields, expected_status, words = BAD_CONVERT[case]
    status, headers, body = post_form(server, "/api/convert", fields, {"audio": wav_bytes(tone(0.3), SR)})
    assert_json_error(status, headers, body, expected_status, words)


def test_wav2wav_bad_speaker_and_format(server):
    status, headers, body = post_form(server, "/wav2wav", {"spk": "bass"}, {"audio": wav_bytes(tone(0.3), SR)})
    assert_json_error(status, headers, body, 400, "unknown speaker")
    status, headers, body = post_form(server, "/wav2wav", {"tran": "x"}, {"audio": wav_bytes(tone(0.3), SR)})
    assert_json_error(status, headers, body, 400, "tran")


def test_an_oversize_upload_is_refused(server):
    too_big = np.zeros(int(MAX_UPLOAD_MB * 1024 * 1024 * 1.3) // 2, dtype=np.float32)
    status, headers, body = post_form(server, "/voiceChangeModel", GOOD_VST, {"sample": wav_bytes(too_big, SR)})
    assert_json_error(status, headers, body, 413, "--max_upload_mb")
    status, _, _ = request(server, "GET", "/api/health")
    assert status == 200


def test_an_oversize_chunked_upload_is_refused(server):
    """Without a Content-Length the body is counted as it arrives."""
    body, content_type = multipart(GOOD_VST, {"sample": wav_bytes(np.zeros(700_000, dtype=np.float32), SR)})
    chunks = [body[start:start + 65536] for start in range(0, len(body), 65536)]
    connection = http.client.HTTPConnection(*server, timeout=120)
    try:
        connection.request("POST", "/voiceChangeModel", body=iter(chunks), encode_chunked=True,
                           headers={"Content-Type": content_type, "Transfer-Encoding": "chunked"})
        response = connection.getresponse()
        assert_json_error(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read(),
                          413, "--max_upload_mb")
    finally:
        connection.close()


def test_unknown_paths_and_methods_answer_json(server):
    status, headers, body = request(server, "GET", "/nothing")
    assert_json_error(status, headers, body, 404)
    status, headers, body = request(server, "GET", "/voiceChangeModel")
    assert_json_error(status, headers, body, 405)


# ----- the WebSocket stream -------------------------------------------------------------------------

STREAM_START = {"model": "tiny", "speaker": "tenor", "trans": 3, "f0_predictor": "pm", "noice_scale": 0,
                "sample_rate": 22050, "context_seconds": 0.5, "crossfade_seconds": 0.02,
                "sola_search_seconds": 0.01}


def test_stream_matches_the_library_converter(server, svc):
    from websockets.sync.client import connect

    from inference.streaming import StreamingConverter, StreamSettings
    from inference.svc import ConversionOptions

    rate, block = 22050, 2205
    audio = tone(1.0, rate, f0=210)
    blocks = [audio[start:start + block] for start in range(0, len(audio), block)]
    with connect(f"ws://{server[0]}:{server[1]}/api/stream", max_size=None) as websocket:
        websocket.send(json.dumps(STREAM_START))
        answer = json.loads(websocket.recv(timeout=120))
        received = []
        for piece in blocks:
            websocket.send(piece.astype("<f4").tobytes())
            received.append(np.frombuffer(websocket.recv(timeout=120), dtype="<f4"))
    settings = StreamSettings(sample_rate=rate, context_seconds=0.5, crossfade_seconds=0.02, sola_search_seconds=0.01)
    converter = StreamingConverter(svc, ConversionOptions(speaker="tenor", trans=3, noice_scale=0), settings)
    assert answer["latency_samples"] == converter.latency_samples and answer["sample_rate"] == rate
    expected = [converter.process(piece) for piece in blocks]
    for got, want in zip(received, expected):
        assert len(got) == len(want)
        np.testing.assert_allclose(got, want, atol=1e-4)
    assert np.abs(np.concatenate(received)).max() > 1e-3


@pytest.mark.parametrize("start, then, words", [
    ("not json", None, "not valid JSON"),
    (json.dumps({"model": "tiny"}), None, "sample_rate"),
    (json.dumps({**STREAM_START, "speaker": "bass"}), None, "unknown speaker"),
    (json.dumps({**STREAM_START, "model": "other"}), None, "unknown model"),
    (json.dumps(STREAM_START), b"\x00\x01\x02", "float32"),
    (json.dumps(STREAM_START), np.full(100, np.nan, dtype="<f4").tobytes(), "NaN"),
    (json.dumps(STREAM_START), np.zeros(22050 * 5, dtype="<f4").tobytes(), "at most"),
])
def test_stream_refusals(server, start, then, words):
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    with connect(f"ws://{server[0]}:{server[1]}/api/stream", max_size=None) as websocket:
        websocket.send(start)
        reply = json.loads(websocket.recv(timeout=120))
        if then is not None:
            assert "latency_samples" in reply
            websocket.send(then)
            reply = json.loads(websocket.recv(timeout=120))
        assert words in reply["error"]
        with pytest.raises(ConnectionClosed):
            websocket.recv(timeout=30)


def upload_named(filename: bytes, data: bytes, fields: dict[str, str]) -> tuple[bytes, str]:
    """A multipart body whose file part carries `filename` byte for byte (NUL, '../' and all)."""
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
             for name, value in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="audio"; filename="'.encode() + filename
                 + b'"\r\nContent-Type: audio/wav\r\n\r\n' + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def test_an_upload_name_never_becomes_a_path(server, workdir):
    before = {p.relative_to(workdir.parent) for p in workdir.parent.rglob("*")}
    for filename in (b"../../evil\x00.wav", b"/tmp/abs.wav", b"a\\..\\..\\b.wav", "é".encode() * 150 + b".wav"):
        body, content_type = upload_named(filename, wav_bytes(tone(1.0, SR), SR), {"spk": "alto", "tran": "0"})
        status, _, reply = request(server, "POST", "/wav2wav", body, {"Content-Type": content_type})
        assert status == 200, reply[:300]
    after = {p.relative_to(workdir.parent) for p in workdir.parent.rglob("*")}
    assert after - before <= {Path(workdir.name) / "server.log"}
    assert not Path("/tmp/abs.wav").exists()


def test_an_upload_shorter_than_one_frame_is_refused(server):
    status, headers, body = post_form(server, "/api/convert", {"speaker": "alto"},
                                      {"audio": wav_bytes(np.zeros(1), SR)})
    assert_json_error(status, headers, body, 400, "too short to convert: 1 sample(s) at 44100 Hz")
