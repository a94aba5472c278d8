"""The `nsf-snake-hifigan` decoder: the NSF-HiFiGAN generator with every LeakyReLU replaced by an
anti-aliased SnakeBeta (`snakes.<i>` before each upsampling, `resblocks.<j>.activations.<k>` inside the
residual blocks, `snake_post` before the output conv). Same layout otherwise (spec §9.4).
"""
from __future__ import annotations

from typing import Any

from vdecoder.hifigan.models import Generator as NsfGenerator
from vdecoder.hifiganwithsnake.alias import SnakeAlias


class Generator(NsfGenerator):
    """`vdecoder.hifigan.Generator` with `activation=SnakeAlias`; takes the same keyword arguments."""

    def __init__(self, **kwargs: Any):
        super().__init__(activation=SnakeAlias, **kwargs)
