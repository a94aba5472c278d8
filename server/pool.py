"""The models the server was started with, each loaded once and used by one request at a time.

`Svc` keeps per-call state (the cached f0 predictor, the encoder's buffers) and is not thread-safe, so
every use of a model goes through its lock; requests for different models run in parallel.
"""
from __future__ import annotations

import argparse
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np
from loguru import logger

from core.errors import ConfigError, SvcError
from inference.preflight import check_model_files, check_pretrained_files, model_facts
from inference.svc import ConversionOptions, Svc
from server.errors import UnknownModel
from server.settings import ModelSpec, ServerSettings

Result = TypeVar("Result")


@dataclass
class LoadedModel:
    spec: ModelSpec
    svc: Svc
    pretrain_dir: Path
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def speakers(self) -> list[str]:
        return list(self.svc.spk2id)

    @property
    def sample_rate(self) -> int:
        return self.svc.target_sample

    def check(self, options: ConversionOptions) -> None:
        """Refuse options this model cannot honour (before the request waits for the lock)."""
        if options.cluster_infer_ratio > 0 and self.svc.cluster is None:
            raise ConfigError(f"model '{self.name}' was started without a cluster model; use cluster_infer_ratio 0 "
                              "or start the server with -cm for it")
        self.svc.check_options(options)

    def run(self, work: Callable[..., Result], *args) -> Result:
        """Call `work(*args)` holding this model's lock."""
        with self.lock:
            return work(*args)

    def convert(self, audio: np.ndarray, sr: int, options: ConversionOptions) -> np.ndarray:
        """A whole recording at `sr` -> float32 at the model rate, same duration (Svc.convert, locked)."""
        return self.run(self.svc.convert, audio, sr, options)

    def describe(self) -> dict:
        return {"name": self.name, "sample_rate": self.sample_rate, "speakers": dict(self.svc.spk2id),
                "speech_encoder": str(self.svc.config.model.speech_encoder),
                "cluster": self.svc.cluster is not None,
                "feature_retrieval": bool(self.svc.feature_retrieval),
                "auto_predict_f0": bool(self.svc.can_predict_f0)}


class ModelPool:
    """Loaded models by name; the first one is the default of 4.1's endpoints."""

    def __init__(self, models: list[LoadedModel]):
        self.models = {model.name: model for model in models}
        self.default = models[0]

    def get(self, name: str | None) -> LoadedModel:
        if not name:
            return self.default
        if name not in self.models:
            raise UnknownModel(f"unknown model {name!r}; this server has: {', '.join(self.models)}")
        return self.models[name]


def preflight_namespace(spec: ModelSpec, pretrain_dir: Path) -> argparse.Namespace:
    """The inference_main.py flags that inference.preflight's checks read, for one served model."""
    return argparse.Namespace(
        model_path=str(spec.model_path), config_path=str(spec.config_path), only_diffusion=False,
        shallow_diffusion=False, enhance=False, f0_predictor="pm", pretrain_dir=str(pretrain_dir),
        cluster_infer_ratio=1.0 if spec.cluster_model_path else 0.0,
        cluster_model_path=str(spec.cluster_model_path or ""), feature_retrieval=spec.feature_retrieval)


def check_models(settings: ServerSettings) -> None:
    """Every model's config, speakers, pretrained files and checkpoint, before anything is loaded."""
    names = [spec.name for spec in settings.models]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise SvcError(f"two models are named {duplicates[0]!r}; give each its own --name")
    for spec in settings.models:
        args = preflight_namespace(spec, settings.pretrain_dir)
        facts = model_facts(args)
        if not facts.spk2id:
            raise ConfigError(f"config {spec.config_path} lists no speakers (spk)")
        check_pretrained_files(args, facts)
        check_model_files(args)


def load_models(settings: ServerSettings) -> ModelPool:
    """Check, then load every model of `settings` onto its device."""
    check_models(settings)
    loaded = []
    for spec in settings.models:
        started = time.perf_counter()
        svc = Svc(spec.model_path, spec.config_path, device=settings.device,
                  cluster_model_path=spec.cluster_model_path, feature_retrieval=spec.feature_retrieval,
                  pretrain_dir=settings.pretrain_dir, precision=settings.precision)
        logger.info(f"model '{spec.name}' ({spec.model_path}) loaded in {time.perf_counter() - started:.1f} s "
                    f"on {svc.device}; speakers: {', '.join(svc.spk2id)}")
        loaded.append(LoadedModel(spec, svc, Path(settings.pretrain_dir)))
    return ModelPool(loaded)
