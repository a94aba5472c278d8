"""inference_main.py refuses or explains bad runs in one line, before work is done; long inputs stay bounded.

The scripts run in subprocesses on a tiny random-weight model and the tiny ContentVec fixture, as a user
would run them. "model loaded" in the log marks that a model was loaded, so its absence proves that a
refusal came before.
"""
from __future__ import annotations

import argparse
import itertools
import os
import pickle
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import REPO, run_script
from inference.naming import output_name
from inference.preflight import check_auto_f0, model_facts
from inference.svc import ConversionOptions, Svc, clip_plan
from core.errors import ConfigError, SvcError, UnsafeFileError
from core.fileio import NotACheckpointError, safe_torch_load
from tests.tiny_model import SR, add_content_encoder, save_model, tone

pytestmark = pytest.mark.shared

LOADED = "model loaded"
LONG_SECONDS = 240
PEAK_RSS_LIMIT_MB = 1500  # without the slice bound this input needs several GB (see test docstring)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A user's folder: G_1.pth + config.json, models without an F0 decoder, pretrain/, raw/, an index."""
    from cluster.feature_index import save_feature_index, train_feature_index

    root = tmp_path_factory.mktemp("hardening")
    save_model(root, "config.json", "G_1.pth")
    save_model(root, "no_f0_decoder.json", "no_f0_decoder.pth", use_f0_decoder=False)
    save_model(root, "no_f0_weights.json", "no_f0_weights.pth", drop_f0_decoder=True)
    add_content_encoder(root)
    rng = np.random.default_rng(0)
    save_feature_index({i: train_feature_index(rng.normal(size=(400, 64)).astype(np.float32)) for i in (0, 1)},
                       root / "feature_and_index.pkl")
    raw = root / "raw"
    raw.mkdir()
    sf.write(raw / "song.wav", tone(3.0, start=0.3), SR)
    sf.write(raw / "twelve.wav", tone(12.0), SR)
    return root


def convert(workdir: Path, *args: str, model: str = "G_1.pth", config: str = "config.json", check: bool = True):
    return run_script("inference_main.py", "-m", model, "-c", config, "-d", "cpu", *args, cwd=workdir, check=check)


def refused(result: subprocess.CompletedProcess, *phrases: str, before_loading: bool = True) -> None:
    """A one-line refusal: exit status 1, each phrase in the log, no traceback, and (usually) no model loaded."""
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    for phrase in phrases:
        assert phrase in result.stderr, f"{phrase!r} not in:\n{result.stderr}"
    if before_loading:
        assert LOADED not in result.stderr, result.stderr


def results(workdir: Path, folder: str = "results") -> set[str]:
    path = workdir / folder
    return {p.name for p in path.iterdir()} if path.is_dir() else set()


# ----- 1. long slices: bounded memory, same output elsewhere ------------------------------------------

def test_long_input_without_silence_converts_in_bounded_memory(workdir):
    """A 4-minute tone has no silence to slice on. Unbounded, the text encoder's attention over one slice
    grows with its square (measured with this tiny model: 60 s -> 1.6 GB peak, 120 s -> 5.0 GB, so 240 s
    needs about 20 GB; 12 minutes asks for ~31 GB for one tensor and dies). In 30-s clips it stays under
    1.5 GB (measured: 0.9 GB, and 1.1 GB for 12 minutes)."""
    rate = 16000
    t = np.arange(rate * LONG_SECONDS) / rate
    sf.write(workdir / "raw" / "long.wav", (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), rate)
    measure = ("import resource, subprocess, sys\n"
               "code = subprocess.run(sys.argv[1:]).returncode\n"
               "print('PEAK_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
               "sys.exit(code)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    result = subprocess.run([sys.executable, "-c", measure, sys.executable, str(REPO / "inference_main.py"),
                             "-m", "G_1.pth", "-c", "config.json", "-d", "cpu", "-n", "long.wav", "-s", "alto",
                             "-wf", "wav"], cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    peak_mb = int(re.search(r"PEAK_KB (\d+)", result.stderr).group(1)) / 1024
    assert peak_mb < PEAK_RSS_LIMIT_MB, f"peak RSS {peak_mb:.0f} MB"
    audio, sr = sf.read(workdir / "results" / "long.wav_0key_alto_sovits_pm_step1.wav", dtype="float32")
    assert sr == SR and len(audio) == LONG_SECONDS * SR
    assert np.isfinite(audio).all() and np.abs(audio[-SR:]).max() > 0
    assert re.search(r"100%\|.*\| 240/240 s of audio \[\d\d:\d\d<00:00", result.stderr)  # the progress bar


def test_short_input_is_bit_identical_with_the_slice_bound_off(workdir):
    convert(workdir, "-n", "song.wav", "-s", "alto", "-ns", "0", "--results_dir", "results/bounded")
    convert(workdir, "-n", "song.wav", "-s", "alto", "-ns", "0", "--max_slice_seconds", "0",
            "--results_dir", "results/unbounded")
    name = "song.wav_0key_alto_sovits_pm_step1.flac"
    bounded, _ = sf.read(workdir / "results" / "bounded" / name, dtype="float32")
    unbounded, _ = sf.read(workdir / "results" / "unbounded" / name, dtype="float32")
    np.testing.assert_array_equal(bounded, unbounded)
    assert np.abs(bounded).max() > 0


def test_clip_plan_cuts_only_long_slices_and_fits_the_bound():
    sr = 1000
    default = ConversionOptions()
    assert clip_plan(30 * sr, sr, default) == (0, 0)                  # up to the bound: untouched
    assert clip_plan(10 * 60 * sr, sr, ConversionOptions(max_slice_seconds=0)) == (0, 0)
    for seconds in (31, 95, 12 * 60):
        clip, overlap = clip_plan(seconds * sr, sr, default)
        assert overlap == sr                                          # 1 s crossfade
        assert clip + overlap <= 30 * sr                              # no clip exceeds the bound
        assert clip * -(-seconds * sr // clip) >= seconds * sr > clip
    assert clip_plan(95 * sr, sr, ConversionOptions(clip_seconds=10, linear_gradient=2)) == (10 * sr, 2 * sr)
    assert clip_plan(9 * sr, sr, ConversionOptions(clip_seconds=10)) == (0, 0)
    clip, overlap = clip_plan(95 * sr, sr, ConversionOptions(clip_seconds=100, linear_gradient=3))
    assert overlap == 3 * sr and clip + overlap <= 30 * sr            # a -cl beyond the bound gives way


class IdentitySvc(Svc):
    """Svc whose 'model' returns its input, recording the length of every clip it is given."""

    def __init__(self):
        self.target_sample, self.hop_length, self.can_predict_f0 = SR, 512, True
        self.clip_lengths: list[int] = []

    def convert_clip(self, wav, opts, mix=None, keep=None, pitch=None):
        self.clip_lengths.append(len(wav))
        return np.asarray(wav, dtype=np.float32), len(wav) // self.hop_length


def test_long_slice_clips_join_back_into_the_input():
    noise = (0.3 * np.random.default_rng(0).standard_normal(100 * SR)).astype(np.float32)
    svc = IdentitySvc()
    out = svc.convert(noise, SR, ConversionOptions(pad_seconds=0.5))
    assert len(out) == len(noise)
    np.testing.assert_allclose(out, noise, atol=1e-6)
    assert len(svc.clip_lengths) == 4 and max(svc.clip_lengths) <= 31 * SR
    svc = IdentitySvc()
    svc.convert(noise[:20 * SR], SR, ConversionOptions(pad_seconds=0.5))
    assert svc.clip_lengths == [21 * SR]                              # a short slice is one clip, as before


# ----- 2. files that are not checkpoints ----------------------------------------------------------------

NOT_CHECKPOINTS = {
    "text": (b"these are my notes about the model\nsecond line\n", "a text file"),
    "html": (b"<!DOCTYPE html>\n<html><head><title>Download</title></head><body>sign in</body></html>\n",
             "an HTML page"),
    "lfs": (b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"ab" * 32 + b"\nsize 209715200\n",
            "git-LFS pointer"),
    "json": (b'{"train": {"log_interval": 200}, "spk": {"alto": 0}}\n', "a JSON file"),
    "empty": (b"", "empty file"),
}


@pytest.mark.parametrize("kind", sorted(NOT_CHECKPOINTS))
def test_a_file_that_is_not_a_checkpoint_says_what_it_is(tmp_path, kind):
    content, description = NOT_CHECKPOINTS[kind]
    path = tmp_path / "G_100.pth"
    path.write_bytes(content)
    with pytest.raises(NotACheckpointError) as error:
        safe_torch_load(path)
    message = str(error.value)
    assert message.startswith(f"{path} is not a checkpoint (") and description in message
    assert "could run code" not in message
    if kind == "lfs":
        assert "git lfs pull" in message


def test_an_archive_to_unpack_is_not_a_checkpoint(tmp_path):
    with zipfile.ZipFile(tmp_path / "rmvpe.pt", "w") as archive:
        archive.writestr("model.pt", b"weights")
    with pytest.raises(NotACheckpointError, match="zip archive holding model.pt"):
        safe_torch_load(tmp_path / "rmvpe.pt")


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_pickles_that_run_code_are_still_refused(tmp_path, protocol):
    marker = tmp_path / "pwned"
    path = tmp_path / "G_1.pth"
    path.write_bytes(pickle.dumps({"model": _Payload(marker)}, protocol=protocol))
    with pytest.raises(UnsafeFileError, match="could run code") as error:
        safe_torch_load(path)
    assert not marker.exists()
    assert "In PyTorch 2.6" not in str(error.value)  # torch's boilerplate gives way to what was refused


def test_real_checkpoints_still_load(tmp_path):
    weights = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "iteration": 7}
    torch.save(weights, tmp_path / "zip.pth")
    torch.save(weights, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    for name, mmap in itertools.product(("zip.pth", "legacy.pth"), (False, True)):
        loaded = safe_torch_load(tmp_path / name, mmap=mmap)
        assert loaded["iteration"] == 7 and torch.equal(loaded["model"]["w"], weights["model"]["w"])
    truncated = tmp_path / "cut.pth"
    truncated.write_bytes((tmp_path / "zip.pth").read_bytes()[:300])
    for mmap in (False, True):
        with pytest.raises(SvcError, match=r"cannot read .*\(a truncated or damaged file\?\)"):
            safe_torch_load(truncated, mmap=mmap)


def test_lfs_pointer_as_model_is_one_line(workdir):
    (workdir / "G_2.pth").write_bytes(NOT_CHECKPOINTS["lfs"][0])
    result = convert(workdir, "-n", "song.wav", "-s", "alto", model="G_2.pth", check=False)
    refused(result, "G_2.pth is not a checkpoint (a git-LFS pointer", "git lfs pull")


# ----- 3. the results folder ----------------------------------------------------------------------------

@pytest.mark.parametrize("folder, phrase", [
    ("config.json/out", "cannot create folder --results_dir config.json/out: config.json is a file"),
    ("config.json", "cannot create folder --results_dir config.json: config.json is a file"),
    ("/proc/no/such/folder", "cannot create folder --results_dir /proc/no/such/folder: No such file or directory"),
    ("/proc", "is not writable"),
])
def test_unusable_results_dir_is_refused_before_loading(workdir, folder, phrase):
    result = convert(workdir, "-n", "song.wav", "-s", "alto", "--results_dir", folder, check=False)
    refused(result, f"--results_dir {folder}", phrase)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes into a read-only folder anyway, so chmod cannot make one unwritable")
def test_read_only_results_dir_is_refused(workdir):
    folder = workdir / "read_only"
    folder.mkdir(exist_ok=True)
    folder.chmod(0o555)
    try:
        result = convert(workdir, "-n", "song.wav", "-s", "alto", "--results_dir", str(folder), check=False)
    finally:
        folder.chmod(0o755)
    refused(result, "is not writable")


# ----- 4. output format ---------------------------------------------------------------------------------

def test_output_format_is_checked_before_converting(workdir):
    refused(convert(workdir, "-n", "song.wav", "-s", "alto", "-wf", "xyz", check=False),
            "-wf/--wav_format 'xyz' is not an audio format", "flac")
    refused(convert(workdir, "-n", "song.wav", "-s", "alto", "-wf", "raw", check=False), "cannot be written")
    convert(workdir, "-n", "song.wav", "-s", "alto", "-wf", "WAV", "--results_dir", "results/upper")
    assert sf.info(str(workdir / "results" / "upper" / "song.wav_0key_alto_sovits_pm_step1.WAV")).format == "WAV"


# ----- 5. inputs ----------------------------------------------------------------------------------------

def test_inputs_say_what_they_are_before_loading(workdir):
    raw = workdir / "raw"
    (raw / "folder.wav").mkdir(exist_ok=True)
    (raw / "gone.wav").symlink_to(raw / "deleted.wav")
    (raw / "._song.wav").write_bytes(b"\x00\x05\x16\x07" + bytes(60))
    cases = {"folder.wav": "raw/folder.wav is a folder, not an audio file",
             "gone.wav": f"raw/gone.wav is a symbolic link to {raw / 'deleted.wav'}, which does not exist",
             "._song.wav": "macOS '._' metadata file"}
    for name, phrase in cases.items():  # the bad input comes second: all are checked before the model loads
        refused(convert(workdir, "-n", "song.wav", name, "-s", "alto", "--results_dir", "results/inputs",
                        check=False), phrase)
    assert results(workdir, "results/inputs") == set()
    result = convert(workdir, "-n", ".hidden", "-s", "alto", check=False)
    refused(result, "input not found: raw/.hidden")


def test_hidden_input_is_converted_with_a_visible_name(workdir):
    sf.write(workdir / "raw" / ".take.wav", tone(2.0), SR)
    result = convert(workdir, "-n", ".take.wav", "-s", "alto", "--results_dir", "results/hidden")
    assert "hidden file" in result.stderr
    assert results(workdir, "results/hidden") == {"take.wav_0key_alto_sovits_pm_step1.flac"}


# ----- 6. transpose -------------------------------------------------------------------------------------

def test_transpose_is_bounded(workdir):
    for value in ("1000", "-49"):
        result = convert(workdir, "-n", "song.wav", "-s", "alto", "-t", value, check=False)
        assert result.returncode == 2 and "-48..48 semitones" in result.stderr and "Traceback" not in result.stderr
    convert(workdir, "-n", "song.wav", "-s", "alto", "-t", "-48", "--results_dir", "results/low")
    assert results(workdir, "results/low") == {"song.wav_-48key_alto_sovits_pm_step1.flac"}


# ----- 7. -a without an F0 decoder ------------------------------------------------------------------------

def test_auto_f0_needs_an_f0_decoder(workdir):
    result = convert(workdir, "-n", "song.wav", "-s", "alto", "-a", "--results_dir", "results/auto",
                     model="no_f0_decoder.pth", config="no_f0_decoder.json", check=False)
    refused(result, "-a/--auto_predict_f0 needs the model's F0 decoder", "use_automatic_f0_prediction is false")
    result = convert(workdir, "-n", "song.wav", "-s", "alto", "-a", "--results_dir", "results/auto",
                     model="no_f0_weights.pth", config="no_f0_weights.json", check=False)
    refused(result, "no f0_decoder weights", before_loading=False)
    assert results(workdir, "results/auto") == set()
    convert(workdir, "-n", "song.wav", "-s", "alto", "--results_dir", "results/auto",
            model="no_f0_weights.pth", config="no_f0_weights.json")  # without -a that model converts
    assert results(workdir, "results/auto") == {"song.wav_0key_alto_sovits_pm.flac"}


def test_auto_f0_with_only_diffusion_is_refused():
    args = argparse.Namespace(auto_predict_f0=True, only_diffusion=True)
    with pytest.raises(ConfigError, match="no So-VITS model"):
        check_auto_f0(args, None)


# ----- 8. progress ----------------------------------------------------------------------------------------

def test_progress_bar_for_inputs_longer_than_a_few_seconds(workdir):
    result = convert(workdir, "-n", "twelve.wav", "song.wav", "-s", "alto", "--results_dir", "results/progress")
    assert re.search(r"twelve\.wav -> alto: +\d+%\|.*\| 12/12 s of audio \[\d\d:\d\d<\d\d:\d\d, ", result.stderr)
    assert "song.wav -> alto" not in result.stderr  # 3 s: no bar


# ----- 9. result names ----------------------------------------------------------------------------------

def test_result_names_tag_what_changes_the_audio(workdir):
    common = ("-n", "song.wav", "-s", "alto", "-ns", "0", "--results_dir", "results/names")
    convert(workdir, *common)
    convert(workdir, *common, "-cr", "0.5", "-fr", "-cm", "feature_and_index.pkl")
    convert(workdir, *common, "-lea", "0.5")
    assert results(workdir, "results/names") == {"song.wav_0key_alto_sovits_pm_step1.flac",
                                                "song.wav_0key_alto_0.5_sovits_pm_fr_step1.flac",
                                                "song.wav_0key_alto_sovits_pm_lea0.5_step1.flac"}


def test_result_names_for_diffusion():
    args = argparse.Namespace(auto_predict_f0=False, cluster_infer_ratio=0, only_diffusion=False,
                              shallow_diffusion=True, f0_predictor="rmvpe", feature_retrieval=False,
                              loudness_envelope_adjustment=1, k_step=40, model_path="logs/44k/G_30400.pth",
                              wav_format="flac")
    assert output_name("song.wav", 2, "nen", args) == "song.wav_2key_nen_sovdiff_rmvpe_ks40_step30400.flac"
    args.only_diffusion = True
    assert output_name("song.wav", 2, "nen", args) == "song.wav_2key_nen_diff_rmvpe.flac"
    args.only_diffusion, args.shallow_diffusion, args.model_path = False, False, "release.pth"
    assert output_name("song.wav", 0, "nen", args) == "song.wav_0key_nen_sovits_rmvpe.flac"  # 4.1's name


def test_an_existing_result_is_never_overwritten_silently(workdir):
    common = ("-n", "song.wav", "-s", "alto", "--results_dir", "results/again")
    convert(workdir, *common, "-ns", "0")
    first = (workdir / "results" / "again" / "song.wav_0key_alto_sovits_pm_step1.flac").read_bytes()
    result = convert(workdir, *common, "-ns", "0.8")
    assert "writing song.wav_0key_alto_sovits_pm_step1_1.flac instead" in result.stderr
    assert (workdir / "results" / "again" / "song.wav_0key_alto_sovits_pm_step1.flac").read_bytes() == first
    convert(workdir, *common, "-ns", "0.8", "--overwrite")
    assert results(workdir, "results/again") == {"song.wav_0key_alto_sovits_pm_step1.flac",
                                                 "song.wav_0key_alto_sovits_pm_step1_1.flac"}
    assert (workdir / "results" / "again" / "song.wav_0key_alto_sovits_pm_step1.flac").read_bytes() != first


# ----- 10. checks before the model is loaded ------------------------------------------------------------

def test_speakers_and_pretrained_files_are_checked_before_the_model(workdir):
    """The model file is not even a checkpoint: each message must come before anything looks at it."""
    (workdir / "G_3.pth").write_text("not a model\n")
    result = convert(workdir, "-n", "song.wav", "-s", "alto", "bass", model="G_3.pth", check=False)
    refused(result, "unknown speaker 'bass'; this model has: alto, tenor")
    result = convert(workdir, "-n", "song.wav", "-s", "alto", "-f0p", "rmvpe", model="G_3.pth", check=False)
    refused(result, "f0 predictor rmvpe needs the pretrained file 'rmvpe.pt'")
    (workdir / "empty_pretrain").mkdir(exist_ok=True)
    result = convert(workdir, "-n", "song.wav", "-s", "alto", "--pretrain_dir", "empty_pretrain", model="G_3.pth",
                     check=False)
    refused(result, "speech encoder vec768l12 needs the pretrained file 'checkpoint_best_legacy_500.pt'")
    result = convert(workdir, "-n", "song.wav", "-s", "alto", model="G_3.pth", check=False)
    refused(result, "G_3.pth is not a checkpoint (a text file")


def test_model_facts_come_from_the_config_alone(workdir):
    args = argparse.Namespace(only_diffusion=False, config_path=str(workdir / "no_f0_decoder.json"))
    facts = model_facts(args)
    assert facts.spk2id == {"alto": 0, "tenor": 1} and facts.sample_rate == SR and not facts.has_f0_decoder
