"""Shallow diffusion (4.1 / DDSP-SVC compatible): Unit2Mel model (DDPM or rectified flow), samplers, training.

Library entry points: `load_model(model_path, config_path=None, device=None) -> (Unit2Mel, config)` and
`Unit2Mel.infer(...)`; training lives in diffusion.trainer (used by train_diff.py).
"""
from diffusion.samplers import FLOW_METHODS, METHODS, OBJECTIVES
from diffusion.unit2mel import Unit2Mel, Unit2MelDims, build_model, load_model

__all__ = ["FLOW_METHODS", "METHODS", "OBJECTIVES", "Unit2Mel", "Unit2MelDims", "build_model", "load_model"]
