"""Audio readers under hostile files (bounded memory, one-line refusals) and long clips in bounded windows."""
from __future__ import annotations

import io
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from core.audio import MAX_AUDIO_SAMPLES, load_audio
from core.errors import AudioError
from core.feature_io import load_f0
from preprocess.features import feature_paths, process_file
from preprocess.windows import plan_windows
from tests.conftest import FIXTURES
from tests.fuzz import REPO, fuzz_reader

SR = 16000


def tone(seconds: float, sr: int = SR, freq: float = 220.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    wave = (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return wave if channels == 1 else np.stack([wave * (c + 1) / channels for c in range(channels)], axis=1)


def flac_claiming(frames: int) -> bytes:
    """A valid 16-frame FLAC whose STREAMINFO states `frames` total samples (the 36-bit field)."""
    buffer = io.BytesIO()
    soundfile.write(buffer, np.zeros(16, dtype=np.float32), 44100, format="FLAC")
    data = bytearray(buffer.getvalue())
    field = int.from_bytes(data[18:26], "big")  # STREAMINFO at byte 8; rate, channels, bits, total at +10
    field = (field & ~((1 << 36) - 1)) | frames
    data[18:26] = field.to_bytes(8, "big")
    return bytes(data)


def run_capped(code: str, memory_mb: int = 1500) -> subprocess.CompletedProcess:
    """`code` in a child whose address space is capped, so that a reader that allocates what a header claims
    fails there (MemoryError) instead of taking the machine's memory."""
    cap = (f"import resource; resource.setrlimit(resource.RLIMIT_AS, ({memory_mb << 20}, {memory_mb << 20}))\n")
    return subprocess.run([sys.executable, "-c", cap + code], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})


def load_in_capped_child(path: Path, sr: int | None = None, memory_mb: int = 1500) -> str:
    """What load_audio says about `path` in a memory-capped child: "ok N" or the error's type and text."""
    done = run_capped(
        "from core.audio import load_audio\nfrom core.errors import SvcError\n"
        f"try:\n    audio, _ = load_audio({str(path)!r}, {sr!r})\n    print('ok', len(audio))\n"
        "except SvcError as error:\n    print('SvcError', error)\n", memory_mb)
    assert done.returncode == 0, done.stderr[-1500:]
    return done.stdout.strip()


# ---------------------------------------------------------------- headers that lie about their size

def test_a_flac_header_claiming_billions_of_frames_is_refused_before_reading(tmp_path):
    path = tmp_path / "bomb.flac"
    path.write_bytes(flac_claiming(12_900_000_000))
    assert path.stat().st_size < 100
    said = load_in_capped_child(path)
    assert said.startswith("SvcError audio ") and str(path) in said and "claims 12900000000 frames" in said
    assert "\n" not in said


def test_a_stream_cut_short_of_its_claim_is_refused_without_allocating_the_claim(tmp_path):
    path = tmp_path / "short.flac"
    path.write_bytes(flac_claiming(MAX_AUDIO_SAMPLES // 2))  # within the bound: 1 GiB of float32 claimed
    assert load_in_capped_child(path, memory_mb=900) == (
        f"SvcError audio {path} is damaged or cut short: decoding failed after 0 frames of the 268435456 its "
        "header claims (Internal psf_fseek() failed.)")


def test_an_uncompressed_header_claiming_more_than_the_file_holds_is_damaged(tmp_path):
    buffer = io.BytesIO()
    soundfile.write(buffer, np.zeros(1000, dtype=np.float32), 8000, format="SDS", subtype="PCM_16")
    data = bytearray(buffer.getvalue())
    data[9:13] = (0x7FFFFFFF).to_bytes(4, "little")  # the sample count of the SDS header
    path = tmp_path / "damaged.sds"
    path.write_bytes(data)
    with pytest.raises(AudioError) as caught:
        load_audio(path)
    assert str(caught.value) == (f"audio {path} is damaged: its header claims 2097151 frames x 1 channel(s) of "
                                 f"PCM_16 (4194302 bytes) but the file has {len(data)} bytes")


def test_resampling_a_file_with_an_absurd_rate_is_refused(tmp_path):
    path = tmp_path / "one_hertz.wav"
    soundfile.write(path, np.zeros(20_000, dtype=np.float32), 1, subtype="PCM_16")
    said = load_in_capped_child(path, 44100)
    assert said.startswith(f"SvcError audio {path} at 1 Hz would become 882000000 samples at 44100 Hz")


# ---------------------------------------------------------------- depths, channels, rates, bad samples

@pytest.mark.parametrize("subtype,channels,sr", [("PCM_U8", 1, 16000), ("PCM_24", 1, 48000), ("PCM_16", 2, 22050),
                                                 ("FLOAT", 6, 96000), ("PCM_32", 1, 8000)])
def test_depths_channels_and_rates_read_as_the_channel_mean(tmp_path, subtype, channels, sr):
    audio = tone(0.5, sr, channels=channels)
    path = tmp_path / f"x_{subtype}.wav"
    soundfile.write(path, audio, sr, subtype=subtype)
    written, _ = soundfile.read(path, dtype="float32", always_2d=True)
    mono, rate = load_audio(path)
    assert rate == sr and mono.dtype == np.float32
    np.testing.assert_array_equal(mono, written.mean(axis=1))
    both, _ = load_audio(path, mono=False)
    np.testing.assert_array_equal(both, written.T)
    at_16k, rate = load_audio(path, sr=16000)
    assert rate == 16000 and abs(len(at_16k) - 8000) <= 1


def test_a_long_file_reads_exactly_across_read_blocks(tmp_path):
    audio = tone(20.0, 22050, channels=2)  # 441000 frames: two blocks and a part
    path = tmp_path / "long.flac"
    soundfile.write(path, audio, 22050)
    written, _ = soundfile.read(path, dtype="float32", always_2d=True)
    np.testing.assert_array_equal(load_audio(path)[0], written.mean(axis=1))


def bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    nan = tone(0.1)
    nan[500] = np.nan
    inf = tone(0.1)
    inf[-1] = np.inf
    cases = {"nan": (nan, "holds NaN or infinite samples"), "inf": (inf, "holds NaN or infinite samples"),
             "empty": (np.zeros(0, dtype=np.float32), "holds no samples")}
    files = {}
    for name, (audio, said) in cases.items():
        soundfile.write(tmp_path / f"{name}.wav", audio, SR, subtype="FLOAT")
        files[name] = (tmp_path / f"{name}.wav", said)
    (tmp_path / "notes.wav").write_text("not audio at all\n")
    files["text"] = (tmp_path / "notes.wav", "Format not recognised")
    (tmp_path / "zero.wav").write_bytes(b"")
    files["zero bytes"] = (tmp_path / "zero.wav", "")
    return files


@pytest.mark.parametrize("case", ["nan", "inf", "empty", "text", "zero bytes"])
def test_bad_samples_and_non_audio_give_one_line_naming_the_file(tmp_path, case):
    path, said = bad_files(tmp_path)[case]
    with pytest.raises(AudioError) as caught:
        load_audio(path)
    message = str(caught.value)
    assert str(path) in message and said in message and "\n" not in message
    assert "Error opening" not in message  # soundfile's prefix repeats the path


# ---------------------------------------------------------------- the server's in-memory decoder

def decode_file(path: str) -> None:
    """The server's upload decoder on the bytes of `path` (the fuzz reader of the in-memory path)."""
    from server.audio_io import decode_upload
    from server.settings import Limits

    decode_upload(Path(path).read_bytes(), "sample", Limits())


def test_the_server_refuses_a_lying_header_without_decoding_it(tmp_path):
    path = tmp_path / "bomb.flac"
    path.write_bytes(flac_claiming(12_900_000_000))
    done = run_capped("from server.audio_io import decode_upload\nfrom server.settings import Limits\n"
                      "from core.errors import SvcError\n"
                      f"try:\n    decode_upload(open({str(path)!r}, 'rb').read(), 'sample', Limits(max_seconds=1e9))\n"
                      "except SvcError as error:\n    print(error)\n")
    assert done.returncode == 0, done.stderr[-1500:]
    assert done.stdout.startswith("the uploaded file 'sample' claims 12900000000 frames x 1 channel(s)")


def test_the_server_names_the_upload_not_an_object_address():
    from server.audio_io import decode_upload
    from server.errors import RequestError
    from server.settings import Limits

    buffer = io.BytesIO()
    soundfile.write(buffer, np.zeros(1000, dtype=np.float32), 8000, format="CAF", subtype="PCM_16")
    data = bytearray(buffer.getvalue())
    at = data.find(b"data")
    data[at + 4:at + 12] = (2 ** 40).to_bytes(8, "big")
    with pytest.raises(RequestError) as caught:
        decode_upload(bytes(data), "sample", Limits())
    assert str(caught.value) == ("the uploaded file 'sample' is not audio soundfile can read "
                                 "(Supported file format but file is malformed.)")


# ---------------------------------------------------------------- fuzzing

@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("audio_seeds")
    files = {"pcm16": ("wav", "PCM_16"), "float": ("wav", "FLOAT"), "flac": ("flac", "PCM_16")}
    if "OGG" in soundfile.available_formats():
        files["ogg"] = ("ogg", "VORBIS")
    paths = {}
    for name, (ext, subtype) in files.items():
        paths[name] = folder / f"seed_{name}.{ext}"
        soundfile.write(paths[name], tone(0.05, channels=2), SR, subtype=subtype)
    return paths


def load_at_44k(path: str) -> None:
    """load_audio with resampling, so that a mutated rate meets the resampler too."""
    load_audio(path, sr=44100)


@pytest.mark.parametrize("reader,kinds,seed", [
    ("core.audio:load_audio", ("pcm16", "float"), 11),
    ("core.audio:load_audio", ("flac", "ogg"), 12),
    ("tests.test_audio_hardening:load_at_44k", ("pcm16", "flac"), 13),
    ("tests.test_audio_hardening:decode_file", ("pcm16", "float", "flac", "ogg"), 14),
])
def test_fuzzed_audio_is_read_or_refused_in_one_line(seeds, reader, kinds, seed):
    chosen = [seeds[kind] for kind in kinds if kind in seeds]
    report = fuzz_reader(reader, chosen, cases=1500, seed=seed, memory_mb=768, case_seconds=10)
    assert report.ok, report.summary()


# ---------------------------------------------------------------- long clips in windows

def fairseq_frames(n: int) -> int:
    return (n - 400) // 320 + 1


@pytest.mark.parametrize("frames_of", [fairseq_frames, lambda n: n // 320], ids=["fairseq", "n//hop"])
def test_windows_keep_exactly_the_frames_of_the_whole_clip(frames_of):
    window, context = 320 * 50, 320 * 7
    for n in [*range(window - 700, window + 700, 37), *range(3 * window, 9 * window, 997)]:
        windows = plan_windows(n, 320, window, context)
        kept = 0
        for w in windows:
            assert w.start % 320 == 0 and w.end - w.start <= window
            assert w.start // 320 + w.keep_from == kept  # each window continues where the last stopped
            stop = frames_of(w.end - w.start) if w.keep_to is None else w.keep_to
            assert w.keep_to is None or w.keep_to <= frames_of(w.end - w.start)
            kept += stop - w.keep_from
        assert kept == frames_of(n), n
        assert (len(windows) == 1) == (n <= window)


@pytest.fixture(scope="module")
def pretrain(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pretrain")
    shutil.copy(FIXTURES / "contentvec" / "checkpoint_best_legacy_500.pt", folder)
    return folder


@pytest.fixture
def extractor_16k(pretrain, monkeypatch):
    """An extractor at 16 kHz (no resampling) whose windows are 5 s with 1 s of context."""
    import preprocess.features as features
    import preprocess.windows as windows

    monkeypatch.setattr(features, "FEATURE_WINDOW_SECONDS", 5.0)
    monkeypatch.setattr(features, "FEATURE_CONTEXT_SECONDS", 1.0)
    monkeypatch.setattr(windows, "FEATURE_WINDOW_SECONDS", 5.0)
    monkeypatch.setattr(windows, "FEATURE_CONTEXT_SECONDS", 1.0)
    settings = features.FeatureSettings(f0_predictor="pm", sampling_rate=SR, hop_length=320,
                                        pretrain_dir=str(pretrain))
    return features.FeatureExtractor(settings)


class Spy:
    """Wraps a model call and records the length of every input."""

    def __init__(self, call):
        self.call = call
        self.lengths: list[int] = []

    def __call__(self, audio, *args):
        self.lengths.append(len(audio))
        return self.call(audio, *args)


def test_the_encoder_never_sees_more_than_a_window(extractor_16k):
    audio = tone(21.3)
    whole = extractor_16k.encoder(torch.from_numpy(audio))
    spy = Spy(extractor_16k.encoder)
    extractor_16k.encoder = spy
    units = extractor_16k.units(audio)
    assert max(spy.lengths) <= 5 * SR and len(spy.lengths) == 7  # 4 s, then 3 s per window
    assert units.shape == whole.shape and units.dtype == torch.float32 and torch.isfinite(units).all()
    first_core = 4 * SR // 320  # the first window's frames before its right context equal its own output
    assert torch.equal(units[:, :, :first_core], spy.call(torch.from_numpy(audio[:5 * SR]))[:, :, :first_core])


def test_a_clip_within_the_window_is_encoded_in_one_piece(extractor_16k):
    audio = tone(5.0)
    spy = Spy(extractor_16k.encoder)
    extractor_16k.encoder = spy
    units = extractor_16k.units(audio)
    assert spy.lengths == [5 * SR]
    assert torch.equal(units, spy.call(torch.from_numpy(audio)))


def test_the_f0_of_a_long_clip_is_computed_in_windows(extractor_16k):
    audio = tone(21.3)
    predictor = extractor_16k.f0_predictor
    whole_f0, whole_uv = predictor.compute_f0_uv(audio)
    spy = Spy(predictor.compute_raw_f0)
    predictor.compute_raw_f0 = spy
    value = extractor_16k.f0(audio)
    assert max(spy.lengths) <= 5 * SR and len(spy.lengths) == 7  # 4 s, then 3 s per window
    assert value.dtype == object and value.shape == (2, len(audio) // 320) == (2, len(whole_f0))
    np.testing.assert_allclose(value[0].astype(np.float64), whole_f0, atol=1.0)
    np.testing.assert_array_equal(value[1].astype(np.float64), whole_uv)


def test_preprocess_features_of_a_long_clip_have_matching_lengths(extractor_16k, tmp_path):
    wav = tmp_path / "spk" / "long.wav"
    wav.parent.mkdir()
    soundfile.write(wav, tone(13.7), SR, subtype="PCM_16")
    process_file(extractor_16k, wav, seed=0)
    paths = feature_paths(wav, extractor_16k.settings)
    f0, _ = load_f0(paths["f0"])
    units = torch.load(paths["soft"], weights_only=True)
    spec = torch.load(paths["spec"], weights_only=True)
    n = int(13.7 * SR)
    assert (len(f0), units.shape[-1], spec.shape[-1]) == (n // 320, fairseq_frames(n), n // 320)  # T = N // hop


# ---------------------------------------------------------------- resample.py and long clips

def test_resample_notes_clips_far_longer_than_training_needs(tmp_path):
    from preprocess.dataprep import ResampleSettings, resample_dataset

    (tmp_path / "raw" / "alto").mkdir(parents=True)
    soundfile.write(tmp_path / "raw" / "alto" / "song.wav", tone(31.0, 22050), 22050)
    soundfile.write(tmp_path / "raw" / "alto" / "line.wav", tone(3.0, 22050), 22050)
    report = resample_dataset(tmp_path / "raw", tmp_path / "out", ResampleSettings(), 1)
    notes = {outcome.rel: outcome.note for outcome in report.done}
    assert notes["alto/song.wav"].startswith("31 s long;") and "slice_audio.py" in notes["alto/song.wav"]
    assert notes["alto/line.wav"] == ""
