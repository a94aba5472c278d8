"""So-VITS training data: the per-wav feature files of spec §4.3 → padded batches (spec §10.1).

An item is read from `X.wav` (16-bit PCM) and the files beside it: `X.wav.soft.pt` (content units),
`X.wav.f0.npy` (f0, uv), `X.spec.pt` (linear spectrogram; computed and saved when missing) and, with
`vol_embedding`, `X.wav.vol.npy`. Its speaker is the wav's parent folder name, looked up in `config.spk`.

Randomness (the 790-frame crop, volume augmentation) comes from a generator seeded by (seed, epoch, item),
so an item's crop does not depend on worker processes or on where a resumed run restarts.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import soundfile
import torch
from loguru import logger
from torch.utils.data import Dataset, Sampler

from core import dsp
from core.errors import SvcError, UnsafeFileError
from core.feature_io import load_array, load_f0, load_spec, load_units
from core.fileio import torch_save

MAX_FRAMES = 800  # items longer than this are cropped ...
CROP_FRAMES = 790  # ... to a random window of this many frames
MAX_LENGTH_GAP = 3  # frames by which units/spec/audio lengths may disagree before an item is refused


@dataclass(frozen=True)
class DataOptions:
    """What the loader needs from a config (`data`, `model`, `train`, `spk` sections)."""

    speakers: Mapping[str, int]
    sampling_rate: int = 44100
    hop_length: int = 512
    filter_length: int = 2048
    win_length: int = 2048
    max_wav_value: float = 32768.0
    unit_interpolate_mode: str = "nearest"
    vol_embedding: bool = False
    vol_aug: bool = False
    seed: int = 1234

    @classmethod
    def from_config(cls, hps: Any, *, augment: bool = True) -> "DataOptions":
        """`augment=False` turns vol_aug off (validation)."""
        data, model, train = hps.data, hps.model, hps.train
        return cls(
            speakers=dict(hps.spk), sampling_rate=data.sampling_rate, hop_length=data.hop_length,
            filter_length=data.filter_length, win_length=data.win_length, max_wav_value=data.max_wav_value,
            unit_interpolate_mode=data.get("unit_interpolate_mode", "left"),
            vol_embedding=bool(model.get("vol_embedding", False)),
            vol_aug=augment and bool(train.get("vol_aug", False)), seed=int(train.get("seed", 1234)),
        )


@dataclass
class Item:
    """One utterance: units `[D, T]`, f0 Hz `[T]`, uv `[T]`, spec `[F, T]`, audio `[1, T·hop]`, volume `[T]`."""

    units: torch.Tensor
    f0: torch.Tensor
    uv: torch.Tensor
    spec: torch.Tensor
    audio: torch.Tensor
    speaker: int
    volume: torch.Tensor | None


@dataclass
class Batch:
    """Padded batch, sorted by length (longest first), in the order 4.1's collate returns its fields."""

    units: torch.Tensor  # [B, D, T]
    f0: torch.Tensor  # [B, T]
    spec: torch.Tensor  # [B, F, T]
    audio: torch.Tensor  # [B, 1, T·hop]
    speakers: torch.Tensor  # [B, 1] long
    lengths: torch.Tensor  # [B] long, valid frames
    uv: torch.Tensor  # [B, T]
    volume: torch.Tensor | None  # [B, T]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        move = {k: (v.to(device, non_blocking=non_blocking) if torch.is_tensor(v) else v)
                for k, v in self.__dict__.items()}
        return Batch(**move)

    def __len__(self) -> int:
        return self.units.shape[0]


def read_filelist(path: str | os.PathLike) -> list[str]:
    """Wav paths of a 4.1 filelist: one per line, `|`-separated fields allowed (the first is the path)."""
    path = Path(path)
    if not path.is_file():
        raise SvcError(f"filelist not found: {path}")
    lines = path.read_text(encoding="utf-8").splitlines()
    wavs = [line.split("|")[0].strip() for line in lines if line.strip()]
    if not wavs:
        raise SvcError(f"filelist {path} lists no files")
    return wavs


def spec_path(wav_path: str) -> str:
    """`X.wav` → `X.spec.pt` (the extension is replaced, not appended, as in 4.1)."""
    root, ext = os.path.splitext(wav_path)
    return (root if ext.lower() == ".wav" else wav_path) + ".spec.pt"


class SpeakerDataset(Dataset):
    """4.1's TextAudioSpeakerLoader: reads items, checks their lengths, crops long ones.

    Index with an int, or with `(index, epoch)` (what `BucketSampler` yields) to vary the crop per epoch.
    """

    def __init__(self, filelist: str | os.PathLike | Sequence[str], options: DataOptions, *, all_in_mem: bool = False,
                 root: str | os.PathLike | None = None):
        paths = read_filelist(filelist) if isinstance(filelist, (str, os.PathLike)) else list(filelist)
        base = Path(root) if root is not None else None
        self.paths = [str(base / p) if base is not None and not os.path.isabs(p) else p for p in paths]
        self.options = options
        self._cache = [self.load(i) for i in range(len(self.paths))] if all_in_mem else None

    def __len__(self) -> int:
        return len(self.paths)

    def frame_counts(self) -> list[int]:
        """Approximate frames per item after cropping, from the wav headers (for length bucketing)."""
        counts = []
        for path in self.paths:
            try:
                frames = soundfile.info(path).frames // self.options.hop_length
            except (RuntimeError, OSError, soundfile.LibsndfileError) as error:
                raise SvcError(f"cannot read training audio {path}: {error}") from None
            counts.append(CROP_FRAMES if frames > MAX_FRAMES else frames)
        return counts

    def __getitem__(self, key: int | tuple[int, int]) -> Item:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        item = self._cache[index] if self._cache is not None else self.load(index)
        rng = np.random.default_rng([self.options.seed, epoch, index])
        return self._augment_and_crop(item, rng)

    def load(self, index: int) -> Item:
        """Read one item from disk (no randomness)."""
        path = self.paths[index]
        try:
            return self._load(path)
        except UnsafeFileError as error:
            raise UnsafeFileError(f"training item {path}: {error}") from None
        except SvcError as error:
            raise SvcError(f"training item {path}: {error}") from None
        except (OSError, RuntimeError, ValueError, KeyError, IndexError, TypeError) as error:
            raise SvcError(f"training item {path} is broken ({type(error).__name__}: {error}); "
                           "re-run preprocess_hubert_f0.py for it or remove it from the filelist") from None

    def _load(self, path: str) -> Item:
        opt = self.options
        audio = _read_pcm16(path, opt.sampling_rate, opt.max_wav_value)  # [1, N]
        speaker = self._speaker(path)
        spec = self._spectrogram(path, audio)  # [F, T]
        f0, uv = _read_f0(path + ".f0.npy")
        units = load_units(_need(path + ".soft.pt"))  # [1, D, T]
        units = dsp.repeat_expand_2d(units[0].float(), f0.shape[0], opt.unit_interpolate_mode)  # [D, T]
        volume = _read_volume(path + ".vol.npy") if opt.vol_embedding else None
        return _trim_to_common_length(Item(units, f0, uv, spec, audio, speaker, volume), opt.hop_length, path)

    def _speaker(self, path: str) -> int:
        name = Path(path).parent.name
        if name not in self.options.speakers:
            raise SvcError(f"speaker folder '{name}' is not in the config's spk map {sorted(self.options.speakers)}")
        return int(self.options.speakers[name])

    def _spectrogram(self, path: str, audio: torch.Tensor) -> torch.Tensor:
        opt = self.options
        target = spec_path(path)
        if os.path.exists(target):
            spec = load_spec(target)
            if spec.shape[0] == opt.filter_length // 2 + 1:
                return spec
            logger.warning(f"{target} has {spec.shape[0]} frequency bins but filter_length {opt.filter_length} "
                           f"gives {opt.filter_length // 2 + 1}; computing it again")
        spec = dsp.spectrogram(audio, opt.filter_length, opt.hop_length, opt.win_length)[0]  # [F, T]
        torch_save(spec, target)
        return spec

    def _augment_and_crop(self, item: Item, rng: np.random.Generator) -> Item:
        opt = self.options
        audio, spec, volume = item.audio, item.spec, item.volume
        if opt.vol_aug and opt.vol_embedding and rng.random() > 0.5:
            peak = float(audio.abs().max()) + 1e-5
            shift = rng.uniform(-1.0, min(1.0, math.log10(1.0 / peak)))
            audio = audio * 10.0 ** shift
            volume = volume * 10.0 ** shift
            spec = dsp.spectrogram(audio, opt.filter_length, opt.hop_length, opt.win_length)[0]
        item = Item(item.units, item.f0, item.uv, spec, audio, item.speaker, volume)
        frames = spec.shape[1]
        if frames <= MAX_FRAMES:
            return item
        start = int(rng.integers(0, frames - MAX_FRAMES + 1))
        return _crop(item, start, start + CROP_FRAMES, opt.hop_length)


def _read_pcm16(path: str, sampling_rate: int, max_wav_value: float) -> torch.Tensor:
    """16-bit PCM wav → float `[1, N]` divided by max_wav_value (4.1 reads int16 and divides by 32768)."""
    if not os.path.exists(path):
        raise SvcError("audio file not found")
    info = soundfile.info(path)
    if info.subtype != "PCM_16":
        raise SvcError(f"audio is {info.subtype}, expected 16-bit PCM (run resample.py)")
    if info.samplerate != sampling_rate:
        raise SvcError(f"audio is {info.samplerate} Hz, the config expects {sampling_rate} Hz (run resample.py)")
    samples, _ = soundfile.read(path, dtype="int16", always_2d=True)
    if samples.shape[1] != 1:
        raise SvcError(f"audio has {samples.shape[1]} channels, expected mono (run resample.py)")
    return torch.from_numpy(samples[:, 0].astype(np.float32) / max_wav_value)[None]


def _need(path: str, why: str = "") -> str:
    """`path`, or an SvcError telling the user to run preprocessing if it is missing."""
    if not os.path.exists(path):
        raise SvcError(f"feature file {os.path.basename(path)} is missing ({why}run preprocess_hubert_f0.py)")
    return path


def _read_f0(path: str) -> tuple[torch.Tensor, torch.Tensor]:
    """`X.wav.f0.npy` -> (f0 `[T]`, uv `[T]`) float32, through the safe reader of 4.1's object array."""
    f0, uv = load_f0(_need(path))
    return torch.from_numpy(f0.astype(np.float32)), torch.from_numpy(uv.astype(np.float32))


def _read_volume(path: str) -> torch.Tensor:
    return torch.from_numpy(load_array(_need(path, "vol_embedding is on; "), ndim=1).astype(np.float32))


def _trim_to_common_length(item: Item, hop: int, path: str) -> Item:
    """4.1's checks: units and spec within 3 frames, audio within 3 hops of that; then cut to the shortest."""
    n_units, n_spec = item.units.shape[-1], item.spec.shape[-1]
    if abs(n_units - n_spec) >= MAX_LENGTH_GAP:
        raise SvcError(f"units have {n_units} frames but the spectrogram {n_spec} (f0 {item.f0.shape[0]}); "
                       "the feature files do not belong to this audio")
    frames = min(n_units, n_spec)
    if abs(item.audio.shape[-1] - frames * hop) >= MAX_LENGTH_GAP * hop:
        raise SvcError(f"audio has {item.audio.shape[-1]} samples, expected about {frames * hop} "
                       f"({frames} frames × {hop})")
    return _crop(item, 0, frames, hop)


def _crop(item: Item, start: int, end: int, hop: int) -> Item:
    volume = item.volume[start:end] if item.volume is not None else None
    return Item(item.units[:, start:end], item.f0[start:end], item.uv[start:end], item.spec[:, start:end],
                item.audio[:, start * hop:end * hop], item.speaker, volume)


def collate(items: Sequence[Item]) -> Batch:
    """Sort by length (longest first) and zero-pad every field to the longest item."""
    items = sorted(items, key=lambda it: it.units.shape[1], reverse=True)
    lengths = torch.tensor([it.units.shape[1] for it in items], dtype=torch.long)
    max_frames = max(it.spec.shape[1] for it in items)
    max_samples = max(it.audio.shape[1] for it in items)
    volume = _pad([it.volume for it in items], max_frames) if items[0].volume is not None else None
    return Batch(
        units=_pad([it.units for it in items], int(lengths.max())),
        f0=_pad([it.f0 for it in items], max_frames),
        spec=_pad([it.spec for it in items], max_frames),
        audio=_pad([it.audio for it in items], max_samples),
        speakers=torch.tensor([[it.speaker] for it in items], dtype=torch.long),
        lengths=lengths,
        uv=_pad([it.uv for it in items], max_frames),
        volume=volume,
    )


def _pad(tensors: Sequence[torch.Tensor], length: int) -> torch.Tensor:
    """Stack tensors `[..., T_i]` into `[B, ..., length]`, zero-padded at the end."""
    out = tensors[0].new_zeros((len(tensors), *tensors[0].shape[:-1], length))
    for row, tensor in zip(out, tensors):
        row[..., :tensor.shape[-1]] = tensor
    return out


class BucketSampler(Sampler[list[tuple[int, int]]]):
    """Batches of similar length, reshuffled every epoch, split across `num_replicas` ranks.

    Each epoch: permute the items (seeded by seed + epoch), sort each run of `bucket_batches` batches by length
    so a batch wastes little padding, cut into batches, shuffle the batch order. Every rank gets the same number
    of batches (the list is extended by repeating its head) and rank r takes batches r, r + n, r + 2n, …
    Yields lists of `(index, epoch)` keys for `SpeakerDataset`. `set_epoch(epoch, skip)` picks the epoch and
    how many of this rank's batches were already done (to resume mid-epoch).
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, *, num_replicas: int = 1, rank: int = 0,
                 seed: int = 1234, shuffle: bool = True, bucket_batches: int = 8):
        if batch_size < 1:
            raise SvcError(f"batch_size must be at least 1, got {batch_size}")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.shuffle = shuffle
        self.bucket_batches = bucket_batches
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch = epoch
        self.skip = skip

    def rank_batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches (item indices) for `epoch`."""
        generator = torch.Generator().manual_seed(self.seed + epoch)
        n = len(self.lengths)
        order = torch.randperm(n, generator=generator).tolist() if self.shuffle else list(range(n))
        chunk = self.batch_size * self.bucket_batches
        batches = []
        for start in range(0, n, chunk):
            bucket = sorted(order[start:start + chunk], key=lambda i: self.lengths[i], reverse=True)
            batches += [bucket[i:i + self.batch_size] for i in range(0, len(bucket), self.batch_size)]
        if self.shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
        per_rank = math.ceil(len(batches) / self.num_replicas)
        batches += [batches[i % len(batches)] for i in range(per_rank * self.num_replicas - len(batches))]
        return batches[self.rank::self.num_replicas]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for batch in self.rank_batches(self.epoch)[self.skip:]:
            yield [(index, self.epoch) for index in batch]

    def __len__(self) -> int:
        return max(0, len(self.rank_batches(self.epoch)) - self.skip)
