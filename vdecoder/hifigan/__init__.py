"""NSF-HiFiGAN generator used as So-VITS' decoder (`vocoder_name` "nsf-hifigan")."""
from vdecoder.hifigan.models import Generator, SineGen, SourceModuleHnNSF

__all__ = ["Generator", "SineGen", "SourceModuleHnNSF"]
