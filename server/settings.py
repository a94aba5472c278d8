"""What the server is started with: the models to load and the limits every request is held to."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_PORT = 6842  # 4.1's flask_api.py port, which the so-vits-svc VST plugin calls
DEFAULT_HOST = "127.0.0.1"


@dataclass(frozen=True)
class ModelSpec:
    """One model to load: the name clients use for it and its files."""
    name: str
    model_path: Path
    config_path: Path
    cluster_model_path: Path | None = None
    feature_retrieval: bool = False


@dataclass(frozen=True)
class Limits:
    """Bounds on what one request may ask for; anything beyond is refused with a 4xx."""
    max_upload_bytes: int = 50 * 1024 * 1024
    max_seconds: float = 600.0
    max_block_seconds: float = 4.0      # one WebSocket block
    max_sample_rate: int = 384_000
    min_sample_rate: int = 1_000
    header_timeout: float = 30.0        # seconds a connection may take to send a request's headers
    body_timeout: float = 30.0          # seconds a request's body may go without a byte arriving


@dataclass(frozen=True)
class ServerSettings:
    models: list[ModelSpec]
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    device: str | None = None
    precision: str = "auto"             # inference.precision: fp32 is 4.1's computation
    pretrain_dir: Path = Path("pretrain")
    limits: Limits = field(default_factory=Limits)
