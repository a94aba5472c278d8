"""inference_main.py run as a user would, on a tiny random-weight model and the tiny ContentVec fixture."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import run_script
from inference.svc import crossfade_join
from tests.tiny_model import SR, add_content_encoder, add_vocoder, save_model, tone

pytestmark = pytest.mark.shared


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A folder laid out as a user's: G_1.pth + config.json, pretrain/, raw/, cluster files."""
    from cluster.codebook import save_kmeans
    from cluster.feature_index import save_feature_index, train_feature_index
    root = tmp_path_factory.mktemp("svc")
    save_model(root)
    add_content_encoder(root)
    add_vocoder(root)
    rng = np.random.default_rng(0)
    save_kmeans({"alto": rng.normal(size=(8, 64)), "tenor": rng.normal(size=(8, 64))}, root / "kmeans_10000.pt")
    save_feature_index({0: train_feature_index(rng.normal(size=(400, 64)).astype(np.float32)),
                        1: train_feature_index(rng.normal(size=(400, 64)).astype(np.float32))},
                       root / "feature_and_index.pkl")
    _diffusion_model(root)
    (root / "mix.json").write_text(json.dumps({"alto": [[0, 1, 1, 0]], "tenor": [[0, 1, 0, 1]]}))
    raw = root / "raw"
    raw.mkdir()
    sf.write(raw / "song.wav", tone(3.0, start=0.3), SR)
    stereo = np.stack([tone(2.0, 48000), tone(2.0, 48000, f0=330)], axis=1)
    sf.write(raw / "stereo48k.wav", stereo, 48000, subtype="PCM_24")
    sf.write(raw / "silence.wav", np.zeros(SR * 2, dtype=np.float32), SR)
    sf.write(raw / "short.wav", tone(0.2), SR)
    sf.write(raw / "歌.flac", tone(1.5), SR)
    return root


def _diffusion_model(root: Path) -> None:
    from diffusion import build_model
    from core.config import load_template, save_config

    config = load_template("diffusion_template.yaml")
    config.model.update({"n_layers": 2, "n_chans": 16, "n_hidden": 16, "timesteps": 100, "k_step_max": 0, "n_spk": 2})
    config.data.encoder_out_channels = 64
    config.vocoder.ckpt = "pretrain/nsf_hifigan/model"
    config.spk = {"alto": 0, "tenor": 1}
    (root / "diff").mkdir()
    save_config(config, root / "diff" / "config.yaml")
    torch.manual_seed(1)
    torch.save({"global_step": 0, "model": build_model(config).state_dict()}, root / "diff" / "model_0.pt")
    config.model.k_step_max = 50
    save_config(config, root / "diff" / "shallow.yaml")
    torch.save({"global_step": 0, "model": build_model(config).state_dict()}, root / "diff" / "model_shallow.pt")


def convert(workdir: Path, *args: str, check: bool = True):
    return run_script("inference_main.py", "-m", "G_1.pth", "-c", "config.json", "-d", "cpu", *args,
                      cwd=workdir, check=check)


def read(workdir: Path, name: str) -> tuple[np.ndarray, int]:
    audio, sr = sf.read(workdir / "results" / name, dtype="float32")
    return audio, sr


def test_basic_conversion_names_lengths_and_speakers(workdir):
    convert(workdir, "-n", "song", "stereo48k.wav", "-t", "2", "-s", "alto", "tenor", "-wf", "wav")
    alto, sr = read(workdir, "song_2key_alto_sovits_pm_step1.wav")  # 4.1 keeps the name as typed
    tenor, _ = read(workdir, "song_2key_tenor_sovits_pm_step1.wav")
    assert sr == SR and alto.ndim == 1
    assert abs(len(alto) - 3.0 * SR) <= 512
    assert np.isfinite(alto).all() and np.abs(alto).max() > 0
    assert not np.allclose(alto, tenor)
    stereo, _ = read(workdir, "stereo48k.wav_2key_alto_sovits_pm_step1.wav")  # -t padded with its first value
    assert abs(len(stereo) - 2.0 * SR) <= 512


def test_noise_scale_zero_is_deterministic_and_padding_zero_keeps_audio(workdir):
    for out in ("a", "b"):
        convert(workdir, "-n", "song.wav", "-s", "alto", "-ns", "0", "-p", "0", "--results_dir", f"results/{out}")
    first, _ = read(workdir, "a/song.wav_0key_alto_sovits_pm_step1.flac")
    second, _ = read(workdir, "b/song.wav_0key_alto_sovits_pm_step1.flac")
    np.testing.assert_array_equal(first, second)
    assert np.abs(first[SR:2 * SR]).max() > 0  # pad 0 is no longer silence (4.1 bug §19.6)


def test_forced_clips_crossfade_f0_options_and_loudness(workdir):
    convert(workdir, "-n", "song.wav", "-s", "tenor", "-cl", "1", "-lg", "0.2", "-lgr", "0.5", "-sd", "-35",
            "-f0p", "dio", "-ft", "0.1", "-lea", "0.5", "-a", "-ns", "0.2")
    audio, _ = read(workdir, "song.wav_auto_tenor_sovits_dio_lea0.5_step1.flac")
    assert abs(len(audio) - 3.0 * SR) <= 512 and np.isfinite(audio).all()


def test_kmeans_and_feature_retrieval(workdir):
    convert(workdir, "-n", "song.wav", "-s", "alto", "-cr", "0.5", "-cm", "kmeans_10000.pt", "-ns", "0")
    convert(workdir, "-n", "song.wav", "-s", "alto", "-cr", "0.5", "-fr", "-cm", "feature_and_index.pkl", "-ns", "0")
    kmeans, _ = read(workdir, "song.wav_0key_alto_0.5_sovits_pm_step1.flac")
    assert np.isfinite(kmeans).all() and len(kmeans) > 0
    result = convert(workdir, "-n", "song.wav", "-s", "alto", "-cr", "0.5", "-cm", "missing.pt", check=False)
    assert result.returncode == 1 and "missing.pt" in result.stderr and "Traceback" not in result.stderr


def test_enhancer(workdir):
    convert(workdir, "-n", "歌.flac", "-s", "alto", "-eh", "-eak", "2", "--results_dir", "results/eh")
    audio, sr = read(workdir, "eh/歌.flac_0key_alto_sovits_pm_step1.flac")
    assert sr == SR and abs(len(audio) - 1.5 * SR) <= 512 and np.isfinite(audio).all()


def test_compressed_fp16_model_with_an_old_config(workdir):
    """A compress_model.py -hf release file and a config lacking 4.1's newer keys, as 4.0-era users have."""
    run_script("compress_model.py", "-c", "config.json", "-i", "G_1.pth", "-o", "G_1_release_half.pth", "-hf",
               cwd=workdir)
    config = json.loads((workdir / "config.json").read_text(encoding="utf-8"))
    for key in ("speech_encoder", "vol_embedding"):
        del config["model"][key]
    del config["data"]["unit_interpolate_mode"]
    (workdir / "old_config.json").write_text(json.dumps(config), encoding="utf-8")
    run_script("inference_main.py", "-m", "G_1_release_half.pth", "-c", "old_config.json", "-d", "cpu",
               "-n", "歌.flac", "-s", "tenor", "--results_dir", "results/old", cwd=workdir)
    audio, _ = read(workdir, "old/歌.flac_0key_tenor_sovits_pm.flac")
    assert abs(len(audio) - 1.5 * SR) <= 512 and np.isfinite(audio).all() and np.abs(audio).max() > 0


def test_silence_and_very_short_inputs(workdir):
    convert(workdir, "-n", "silence.wav", "short.wav", "-s", "alto")
    silence, _ = read(workdir, "silence.wav_0key_alto_sovits_pm_step1.flac")
    assert len(silence) == 2 * SR and np.abs(silence).max() < 1e-3
    short, _ = read(workdir, "short.wav_0key_alto_sovits_pm_step1.flac")
    assert abs(len(short) - int(0.2 * SR)) <= 512


def test_dynamic_speaker_mix(workdir):
    convert(workdir, "-n", "song.wav", "-usm", "--spk_mix_file", "mix.json", "-ns", "0")
    mixed, _ = read(workdir, "song.wav_0key_spk_mix_sovits_pm_step1.flac")
    assert abs(len(mixed) - 3.0 * SR) <= 512 and np.isfinite(mixed).all()
    (workdir / "bad.json").write_text(json.dumps({"alto": [[0, 0.5, 1, 1]], "tenor": [[0, 1, 0, 1]]}))
    result = convert(workdir, "-n", "song.wav", "-usm", "--spk_mix_file", "bad.json", check=False)
    assert result.returncode == 1 and "must end at 1" in result.stderr and "Traceback" not in result.stderr


def test_clear_errors_for_unknown_speaker_and_missing_input(workdir):
    result = convert(workdir, "-n", "song.wav", "-s", "bass", check=False)
    assert result.returncode == 1 and "unknown speaker 'bass'" in result.stderr and "Traceback" not in result.stderr
    result = convert(workdir, "-n", "nothing.wav", "-s", "alto", check=False)
    assert result.returncode == 1 and "nothing.wav" in result.stderr and "Traceback" not in result.stderr


def test_shallow_diffusion_and_only_diffusion(workdir):
    diff = ("-dm", "diff/model_0.pt", "-dc", "diff/config.yaml")
    convert(workdir, "-n", "歌.flac", "-s", "tenor", "-shd", "-ks", "20", *diff)
    shallow, _ = read(workdir, "歌.flac_0key_tenor_sovdiff_pm_ks20_step1.flac")
    assert abs(len(shallow) - 1.5 * SR) <= 512 and np.isfinite(shallow).all()
    convert(workdir, "-n", "歌.flac", "-s", "alto", "-shd", "-se", "-ks", "10", "-usm", "--spk_mix_file", "mix.json",
            *diff)
    mixed, _ = read(workdir, "歌.flac_0key_spk_mix_sovdiff_pm_ks10_step1.flac")  # 4.1 crashes here (§19.2)
    assert np.isfinite(mixed).all()
    convert(workdir, "-n", "歌.flac", "-s", "alto", "-od", *diff)
    only, _ = read(workdir, "歌.flac_0key_alto_diff_pm.flac")
    assert abs(len(only) - 1.5 * SR) <= 512 and np.isfinite(only).all()


def test_diffusion_refusals(workdir):
    shallow = ("-dm", "diff/model_shallow.pt", "-dc", "diff/shallow.yaml")
    result = convert(workdir, "-n", "歌.flac", "-s", "alto", "-shd", "-ks", "100", *shallow, check=False)
    assert result.returncode == 1 and "k_step_max 50" in result.stderr and "Traceback" not in result.stderr
    result = convert(workdir, "-n", "歌.flac", "-s", "alto", "-od", *shallow, check=False)
    assert result.returncode == 1 and "shallow diffusion only" in result.stderr
    result = convert(workdir, "-n", "歌.flac", "-s", "alto", "-shd", "-dm", "diff/none.pt", check=False)
    assert result.returncode == 1 and "diff/none.pt" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_ten_minute_input(workdir):
    long = np.tile(np.concatenate([tone(8.0), np.zeros(SR * 2, dtype=np.float32)]), 60)
    sf.write(workdir / "raw" / "long.wav", long, SR)
    convert(workdir, "-n", "long.wav", "-s", "tenor", "-wf", "wav")
    audio, _ = read(workdir, "long.wav_0key_tenor_sovits_pm_step1.wav")
    assert len(audio) == len(long)


def test_crossfade_join_keeps_length_and_blends():
    head = np.ones(100, dtype=np.float32)
    tail = np.zeros(60, dtype=np.float32)
    joined = crossfade_join(head, tail, 20, 0.5)
    assert len(joined) == 140
    assert joined[79] == 1.0 and joined[-1] == 0.0
    assert 0.0 < joined[90] < 1.0
    np.testing.assert_array_equal(crossfade_join(head, tail, 0, 0.5), np.concatenate([head, tail]))
