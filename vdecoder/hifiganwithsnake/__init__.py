"""NSF-HiFiGAN generator with anti-aliased SnakeBeta activations (`vocoder_name` "nsf-snake-hifigan")."""
from vdecoder.hifiganwithsnake.alias import SnakeAlias, SnakeBeta
from vdecoder.hifiganwithsnake.models import Generator

__all__ = ["Generator", "SnakeAlias", "SnakeBeta"]
