"""Training dataset: feature files → items (lengths, spec cache, speaker), crops, collate, clear errors."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile
import torch

from core import dsp
from core.config import HParams
from tests.synthetic import write_synthetic_dataset
from training.dataset import CROP_FRAMES, DataOptions, SpeakerDataset, collate, read_filelist, spec_path
from core.errors import SvcError


def _options(**kw) -> DataOptions:
    return DataOptions(speakers={"alice": 0, "bob": 1}, **kw)


@pytest.fixture(scope="module")
def dataset_paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    return write_synthetic_dataset(root, ["alice", "bob"], items_per_speaker=1, seconds=0.5, ssl_dim=8,
                                   with_volume=True)


def test_filelist_takes_first_field(tmp_path):
    path = tmp_path / "list.txt"
    path.write_text("a/x.wav|spk|text\n\n b/y.wav \n", encoding="utf-8")
    assert read_filelist(path) == ["a/x.wav", "b/y.wav"]
    assert spec_path("d/x.wav") == "d/x.spec.pt" and spec_path("d.wav/x.wav") == "d.wav/x.spec.pt"
    with pytest.raises(SvcError, match="filelist not found"):
        read_filelist(tmp_path / "missing.txt")


def test_item_shapes_spec_cache_and_speaker(dataset_paths):
    wav = dataset_paths[1]
    spec_file = spec_path(wav)
    dataset = SpeakerDataset(dataset_paths, _options(vol_embedding=True))
    item = dataset[1]
    frames = int(0.5 * 44100) // 512
    assert item.units.shape == (8, frames) and item.f0.shape == item.uv.shape == (frames,)
    assert item.spec.shape == (1025, frames) and item.audio.shape == (1, frames * 512)
    assert item.volume.shape == (frames,) and item.speaker == 1
    samples, _ = soundfile.read(wav, dtype="int16")
    torch.testing.assert_close(item.audio[0], torch.from_numpy(samples[: frames * 512] / 32768.0).float())
    saved = torch.load(spec_file, weights_only=True)  # written on first use, atomically
    full_audio = torch.from_numpy(samples / 32768.0).float()[None]
    torch.testing.assert_close(saved, dsp.spectrogram(full_audio)[0])  # of the whole file, as 4.1 saves it
    torch.testing.assert_close(dataset[1].spec, item.spec)  # the second read loads it

    wider = SpeakerDataset(dataset_paths, _options(vol_embedding=True, filter_length=4096, win_length=4096))
    assert wider[1].spec.shape == (2049, frames)  # a cached spec of another filter_length is made again
    assert torch.load(spec_file, weights_only=True).shape[0] == 2049


def test_long_item_is_cropped_to_790_frames(tmp_path):
    paths = write_synthetic_dataset(tmp_path, ["alice"], items_per_speaker=1, seconds=9.5, ssl_dim=4)
    dataset = SpeakerDataset(paths, _options(), all_in_mem=True)
    assert dataset.frame_counts() == [CROP_FRAMES]
    first, again, other_epoch = dataset[(0, 1)], dataset[(0, 1)], dataset[(0, 2)]
    assert first.spec.shape[1] == first.units.shape[1] == first.f0.shape[0] == CROP_FRAMES
    assert first.audio.shape[1] == CROP_FRAMES * 512
    assert torch.equal(first.audio, again.audio)  # seeded by (seed, epoch, index)
    full = dataset.load(0)
    start = next(s for s in range(full.spec.shape[1]) if torch.equal(full.spec[:, s], first.spec[:, 0]))
    torch.testing.assert_close(first.audio, full.audio[:, start * 512:(start + CROP_FRAMES) * 512])
    assert other_epoch.spec.shape == first.spec.shape


def test_volume_augmentation_scales_audio_volume_and_spec(dataset_paths):
    plain = SpeakerDataset(dataset_paths, _options(vol_embedding=True))[0]
    augmented = SpeakerDataset(dataset_paths, _options(vol_embedding=True, vol_aug=True))
    scaled = next(item for item in (augmented[(0, e)] for e in range(20)) if not torch.equal(item.audio, plain.audio))
    ratio = float(scaled.audio.abs().max() / plain.audio.abs().max())
    torch.testing.assert_close(scaled.volume, plain.volume * ratio, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(scaled.spec, dsp.spectrogram(scaled.audio)[0])


def test_collate_sorts_and_pads(tmp_path):
    short = write_synthetic_dataset(tmp_path / "s", ["alice"], items_per_speaker=1, seconds=0.3, ssl_dim=4)
    long = write_synthetic_dataset(tmp_path / "l", ["bob"], items_per_speaker=1, seconds=0.6, ssl_dim=4)
    dataset = SpeakerDataset(short + long, _options())
    batch = collate([dataset[0], dataset[1]])
    n_short, n_long = int(0.3 * 44100) // 512, int(0.6 * 44100) // 512
    assert batch.lengths.tolist() == [n_long, n_short] and batch.speakers.tolist() == [[1], [0]]
    assert batch.spec.shape == (2, 1025, n_long) and batch.audio.shape == (2, 1, n_long * 512)
    assert batch.units.shape == (2, 4, n_long) and batch.volume is None
    assert float(batch.spec[1, :, n_short:].abs().sum()) == 0.0
    assert float(batch.f0[1, n_short:].abs().sum()) == 0.0


def test_broken_items_name_the_file(tmp_path):
    paths = write_synthetic_dataset(tmp_path, ["alice", "carol"], items_per_speaker=1, seconds=0.3, ssl_dim=4)
    with pytest.raises(SvcError, match=r"carol/000\.wav: speaker folder 'carol' is not in the config"):
        SpeakerDataset(paths, _options())[1]
    (tmp_path / "alice" / "000.wav.soft.pt").unlink()
    with pytest.raises(SvcError, match=r"alice/000\.wav: feature file 000\.wav\.soft\.pt is missing"):
        SpeakerDataset(paths, _options())[0]
    np.save(f"{paths[0]}.f0.npy", np.zeros(5))
    with pytest.raises(SvcError, match=r"alice/000\.wav"):
        SpeakerDataset(paths, _options())[0]


def test_length_mismatch_is_refused(tmp_path):
    paths = write_synthetic_dataset(tmp_path, ["alice"], items_per_speaker=1, seconds=0.3, ssl_dim=4)
    soundfile.write(paths[0], np.zeros(44100, dtype=np.float32), 44100, subtype="PCM_16")  # 1 s, features 0.3 s
    with pytest.raises(SvcError, match="units have 25 frames but the spectrogram 86"):
        SpeakerDataset(paths, _options())[0]
    soundfile.write(paths[0], np.zeros(13230, dtype=np.float32), 44100, subtype="FLOAT")
    with pytest.raises(SvcError, match="expected 16-bit PCM"):
        SpeakerDataset(paths, _options())[0]


def test_options_from_config():
    hps = HParams({"data": {"sampling_rate": 44100, "hop_length": 512, "filter_length": 2048, "win_length": 2048,
                            "max_wav_value": 32768.0},
                   "model": {"vol_embedding": True}, "train": {"vol_aug": True, "seed": 7}, "spk": {"a": 0}})
    options = DataOptions.from_config(hps)
    assert options.vol_aug and options.vol_embedding and options.seed == 7
    assert options.unit_interpolate_mode == "left"  # old configs without the key, as 4.1's fallback
    assert not DataOptions.from_config(hps, augment=False).vol_aug
