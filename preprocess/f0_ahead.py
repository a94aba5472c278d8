"""The f0 of a batch computed ahead, in a forked process, while the main process loads the speech encoder.

Importing torch and opening the encoder keep one core busy for about two seconds and leave the other idle; the
WORLD and Parselmouth predictors (registry records with `one_core`) need one core and no torch. So
preprocess_hubert_f0.py forks this process first, before torch is imported: it writes the `.f0.npy` of the files
that have none, in the batch's order, until the encoder is ready; then `finish()` stops it after the file in hand
and the batch goes on as before, finding those f0 files done (its scan reads each one back) and computing the
others' f0 itself (preprocess.features.FeatureExtractor.compute). Stopping there keeps one writer per file; once
the encoder runs, it keeps both cores busy, so the f0 would gain little by running apart.

The process writes the way the batch does (atomically, finite values only) and skips any file it cannot read:
the batch meets that file again and reports it. Nothing here imports torch.
"""
from __future__ import annotations

import multiprocessing
import sys
from pathlib import Path
from typing import Any

import numpy as np

from core.fileio import np_save
from core.registry import f0_predictor_record
from preprocess.feature_files import FeatureSettings, f0_value, feature_paths, list_wavs, load_training_audio


class F0Ahead:
    """A running f0 process; `finish()` stops it after its current file and says how many files it wrote."""

    def __init__(self, process: Any, stop: Any, written: Any):
        self.process = process
        self.stop = stop
        self.written = written
        self.count: int | None = None

    def finish(self) -> int:
        """Stop the process after the file in hand (at most one f0 to wait for) -> files it wrote."""
        if self.count is None:
            self.stop.set()
            self.process.join()
            self.count = self.written.value
        return self.count


def can_run_ahead(settings: FeatureSettings) -> bool:
    """Whether the f0 of `settings` can run ahead here: a one-core predictor, a system that forks (Linux), and
    torch not imported yet (a forked child must not inherit torch's threads)."""
    return (f0_predictor_record(settings.f0_predictor).one_core and sys.platform.startswith("linux")
            and "torch" not in sys.modules)


def start_f0_ahead(in_dir: Path, settings: FeatureSettings) -> F0Ahead | None:
    """Fork the f0 process for the wavs under `in_dir` that have no f0 file yet; None when there are none or
    the f0 cannot run ahead (can_run_ahead)."""
    if not can_run_ahead(settings):
        return None
    wavs = [str(wav) for wav in list_wavs(in_dir) if not feature_paths(wav, settings)["f0"].exists()]
    if not wavs:
        return None
    context = multiprocessing.get_context("fork")
    stop, written = context.Event(), context.Value("i", 0)
    process = context.Process(target=_compute_ahead, args=(wavs, settings, stop, written), daemon=True,
                              name="f0-ahead")
    process.start()
    return F0Ahead(process, stop, written)


def _compute_ahead(wavs: list[str], settings: FeatureSettings, stop: Any, written: Any) -> None:
    from f0_predictor import get_f0_predictor

    try:
        predictor = get_f0_predictor(settings.f0_predictor, hop_length=settings.hop_length,
                                     sampling_rate=settings.sampling_rate, device="cpu",
                                     threshold=settings.f0_threshold, pretrain_dir=settings.pretrain_dir)
    except Exception:  # noqa: BLE001 - the batch builds the predictor again and reports why it cannot
        return
    try:
        for wav in wavs:
            if stop.is_set():
                return
            if _write_f0(predictor, Path(wav), settings):
                with written.get_lock():
                    written.value += 1
    except KeyboardInterrupt:
        return


def _write_f0(predictor: Any, wav: Path, settings: FeatureSettings) -> bool:
    path = feature_paths(wav, settings)["f0"]
    if path.exists():
        return False
    try:
        value = f0_value(predictor, load_training_audio(wav, settings))
    except Exception:  # noqa: BLE001 - the batch meets this file again and reports why
        return False
    if not np.isfinite(np.asarray(value, dtype=np.float64)).all():
        return False
    np_save(path, value, allow_pickle=True)
    return True
