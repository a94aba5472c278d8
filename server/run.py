"""flask_api.py's work: turn its flags into settings, check and load the models, serve until Ctrl-C."""
from __future__ import annotations

import argparse
import socket
from pathlib import Path

from loguru import logger

from core.errors import SvcError
from server.settings import Limits, ModelSpec, ServerSettings

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


def model_specs(args: argparse.Namespace) -> list[ModelSpec]:
    """One spec per -m/-c pair; --name and -cm apply to the models in the order given."""
    names = list(args.name or [])
    clusters = list(args.cluster_model_path or [])
    specs = []
    for index, (model_path, config_path) in enumerate(zip(args.model_path, args.config_path)):
        name = names[index] if index < len(names) else Path(model_path).stem
        cluster = clusters[index] if index < len(clusters) and clusters[index] else None
        specs.append(ModelSpec(name, Path(model_path), Path(config_path),
                               Path(cluster) if cluster else None, args.feature_retrieval))
    return specs


def settings_from(args: argparse.Namespace) -> ServerSettings:
    limits = Limits(max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), max_seconds=args.max_seconds,
                    header_timeout=args.header_timeout, body_timeout=args.body_timeout)
    return ServerSettings(model_specs(args), host=args.host, port=args.port, device=args.device,
                          precision=args.precision,
                          pretrain_dir=Path(args.pretrain_dir), limits=limits)


def check_port_free(host: str, port: int) -> None:
    """Refuse a taken port or an unknown address now, not after the models have loaded."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise SvcError(f"--host {host} is not an address of this machine ({error.strerror or error})") from None
    family, kind, proto, _name, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            raise SvcError(f"cannot listen on {host}:{port} ({error.strerror or error}); is another server "
                           "running there? choose another --port") from None


def serve(args: argparse.Namespace) -> None:
    """Check and load every model, then serve HTTP and WebSocket requests on host:port."""
    import uvicorn

    from server.app import create_app
    from server.body_limit import BodyLimit
    from server.pool import load_models
    from server.timeouts import timed_protocol

    settings = settings_from(args)
    check_port_free(settings.host, settings.port)
    pool = load_models(settings)
    app = BodyLimit(create_app(pool, settings.limits), settings.limits.max_upload_bytes)
    if settings.host not in LOOPBACK_HOSTS:
        logger.warning(f"listening on {settings.host}: every machine that can reach this one can use the models; "
                       "there is no authentication")
    logger.info(f"serving {', '.join(pool.models)} on http://{settings.host}:{settings.port} "
                f"(VST plugin: http://{settings.host}:{settings.port}/voiceChangeModel)")
    try:
        uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning",
                    ws_max_size=settings.limits.max_upload_bytes,
                    http=timed_protocol(settings.limits.header_timeout, settings.limits.body_timeout))
    except OSError as error:
        raise SvcError(f"cannot listen on {settings.host}:{settings.port} ({error.strerror or error})") from None
