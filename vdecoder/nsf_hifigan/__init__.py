"""The standalone pretrained NSF-HiFiGAN mel vocoder (openvpi format) and its mel extraction."""
from vdecoder.nsf_hifigan.config import NSF_HIFIGAN_44K, VocoderConfig
from vdecoder.nsf_hifigan.mel import MelExtractor
from vdecoder.nsf_hifigan.models import Generator
from vdecoder.nsf_hifigan.vocoder import DEFAULT_MODEL_PATH, NsfHifiGAN, load_generator

__all__ = ["NSF_HIFIGAN_44K", "VocoderConfig", "MelExtractor", "Generator", "DEFAULT_MODEL_PATH", "NsfHifiGAN",
           "load_generator"]
