"""realtime.py run as a user would: file mode end to end, device mode without PortAudio and through a stand-in
sound card, --help, refusals."""
from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf

import realtime
from conftest import ASSETS, run_script
from tests.tiny_model import add_content_encoder, save_model

pytestmark = pytest.mark.shared

SONG = ASSETS / "audio" / "singing" / "sms_vignesh.wav"
PORTAUDIO_LINE = "PortAudio is not installed"


def portaudio_present() -> bool:
    try:
        import sounddevice  # noqa: F401
    except OSError:
        return False
    return True


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    if not SONG.is_file():
        pytest.skip(f"needs the shared recordings at {ASSETS}")
    root = tmp_path_factory.mktemp("live")
    save_model(root)
    add_content_encoder(root)
    audio, sr = sf.read(SONG, dtype="float32")
    sf.write(root / "in.wav", audio[:int(2.0 * sr)], sr)
    return root


def live(workdir: Path, *args: str, check: bool = True):
    return run_script("realtime.py", "-m", "G_1.pth", "-c", "config.json", "-d", "cpu", *args,
                      cwd=workdir, check=check)


def test_file_mode_end_to_end(workdir):
    result = live(workdir, "-s", "tenor", "-t", "2", "-ns", "0", "--input", "in.wav", "--output", "out.wav",
                  "--block", "0.25", "--context", "0.5")
    source = sf.info(workdir / "in.wav")
    converted, sr = sf.read(workdir / "out.wav", dtype="float32")
    assert sr == source.samplerate and len(converted) == source.frames
    assert np.isfinite(converted).all() and np.abs(converted).max() > 0
    assert "compute" in result.stderr and "ms per 250 ms block" in result.stderr
    assert "underruns" in result.stderr and "latency" in result.stderr


def test_passthrough_file_mode_keeps_the_input(workdir):
    live(workdir, "--passthrough", "--input", "in.wav", "--output", "through.wav", "--block", "0.1")
    source, _ = sf.read(workdir / "in.wav", dtype="float32")
    through, _ = sf.read(workdir / "through.wav", dtype="float32")
    np.testing.assert_allclose(through, source, atol=1e-4)


@pytest.mark.skipif(portaudio_present(), reason="PortAudio is installed here")
def test_devices_without_portaudio_give_one_line(workdir):
    for args in (["--list_devices"], ["-s", "alto"]):
        result = live(workdir, *args, check=False)
        assert result.returncode == 1
        assert PORTAUDIO_LINE in result.stderr and "--input/--output" in result.stderr
        assert "Traceback" not in result.stderr


def test_help_lists_the_live_flags():
    """(That --help imports no torch is checked for every script in test_registry.py.)"""
    result = run_script("realtime.py", "--help")
    assert "--list_devices" in result.stdout and "--passthrough" in result.stdout


def test_bad_speaker_is_refused_before_loading(workdir):
    (workdir / "broken.pth").write_bytes(b"not a checkpoint")
    result = run_script("realtime.py", "-m", "broken.pth", "-c", "config.json", "-s", "bass", "--input", "in.wav",
                        "--output", "never.wav", cwd=workdir, check=False)
    assert result.returncode == 1 and "unknown speaker 'bass'" in result.stderr
    assert "Traceback" not in result.stderr and not (workdir / "never.wav").exists()


def test_flag_errors(workdir):
    result = live(workdir, "--input", "in.wav", check=False)
    assert result.returncode == 2 and "--input and --output go together" in result.stderr
    result = live(workdir, "-s", "alto", "-f0p", "nope", "--input", "in.wav", "--output", "x.wav", check=False)
    assert result.returncode == 1 and "unknown f0 predictor 'nope'" in result.stderr


class StandInSoundCard:
    """A `sounddevice` stand-in: its Stream calls the callback with a recording, block after block, and
    collects what the callback writes; `sleep` ends the run (as Ctrl-C does) once the recording is used up."""

    class PortAudioError(Exception):
        pass

    class CallbackAbort(Exception):
        pass

    def __init__(self, recording: np.ndarray, sample_rate: int):
        self.recording, self.sample_rate, self.played = recording, sample_rate, []
        self.stream_kwargs: dict = {}

    def query_devices(self, device=None, kind=None):
        return {"name": "stand-in", "default_samplerate": float(self.sample_rate)}

    def Stream(self, **kwargs):  # noqa: N802 (sounddevice's name)
        self.stream_kwargs = kwargs
        return self

    def __enter__(self):
        callback, block = self.stream_kwargs["callback"], self.stream_kwargs["blocksize"]
        status = SimpleNamespace(output_underflow=False, input_overflow=False)
        for start in range(0, len(self.recording) - block + 1, block):
            indata = self.recording[start:start + block, None].copy()
            outdata = np.full_like(indata, np.nan)
            try:
                callback(indata, outdata, block, None, status)
            except self.CallbackAbort:
                self.played.append(outdata[:, 0])
                break
            self.played.append(outdata[:, 0])
        return self

    def __exit__(self, *exc_info):
        return False

    def sleep(self, milliseconds: int) -> None:
        raise KeyboardInterrupt


def device_args(**overrides) -> argparse.Namespace:
    args = realtime.build_parser().parse_args(["-s", "alto", "-d", "cpu", "-ns", "0", "--block", "0.25"])
    return argparse.Namespace(**{**vars(args), **overrides})


def test_sound_card_path_streams_every_block(workdir, monkeypatch):
    """Microphone to speakers through a stand-in sound card: every block comes back converted, at the
    device's rate and block size, and the compute report runs."""
    from inference import live as live_module
    from inference.svc import Svc

    recording, sr = sf.read(workdir / "in.wav", dtype="float32")
    card = StandInSoundCard(recording, sr)
    monkeypatch.setattr(live_module, "import_sounddevice", lambda: card)
    svc = Svc(workdir / "G_1.pth", workdir / "config.json", device="cpu", pretrain_dir=workdir / "pretrain")
    args = device_args()
    with pytest.raises(KeyboardInterrupt):
        live_module.stream_devices(args, lambda rate: live_module.StreamingConverter(
            svc, live_module.stream_options(args), live_module.stream_settings(args, rate)))
    block = int(round(0.25 * sr))
    assert card.stream_kwargs["samplerate"] == sr and card.stream_kwargs["blocksize"] == block
    assert len(card.played) == len(recording) // block
    played = np.concatenate(card.played)
    assert np.isfinite(played).all() and np.abs(played).max() > 0
    assert not np.allclose(played, recording[:len(played)], atol=1e-3)  # converted, not passed through


def test_sound_card_path_passthrough_and_failure(workdir, monkeypatch):
    """--passthrough plays the microphone as it is; a block that fails stops the stream and the error
    reaches the main thread (one line through run_cli), instead of a traceback in the audio thread."""
    from core.errors import SvcError
    from inference import live as live_module

    recording = (0.1 * np.sin(np.arange(48000) / 10)).astype(np.float32)
    card = StandInSoundCard(recording, 48000)
    monkeypatch.setattr(live_module, "import_sounddevice", lambda: card)
    with pytest.raises(KeyboardInterrupt):
        live_module.stream_devices(device_args(), None)
    np.testing.assert_array_equal(np.concatenate(card.played), recording[:len(card.played) * 12000])

    class Failing:
        def process(self, block):
            raise SvcError("the model failed on this block")

    card = StandInSoundCard(recording, 48000)
    monkeypatch.setattr(live_module, "import_sounddevice", lambda: card)
    with pytest.raises(SvcError, match="the model failed on this block"):
        live_module.stream_devices(device_args(), lambda rate: Failing())
    assert len(card.played) == 1 and not card.played[0].any()  # the failed block is played as silence
