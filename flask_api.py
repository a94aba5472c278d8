"""Serve trained models over HTTP: 4.1's VST endpoint and more.

    python flask_api.py -m logs/44k/G_30400.pth -c configs/config.json

Endpoints: POST /voiceChangeModel (the so-vits-svc VST plugin; 4.1's fields), POST /wav2wav (a whole song,
uploaded), GET /api/health, GET /api/models, POST /api/convert (inference_main.py's options) and the
WebSocket /api/stream (live conversion). Serve several models by repeating -m/-c (each named by --name or
its file name). The server listens on 127.0.0.1 only, unless --host says otherwise.
"""
from __future__ import annotations

import argparse

from core.cli_types import finite_float, int_range
from core.errors import run_cli
from inference.precision import PRECISION_HELP, PRECISIONS
from server.settings import DEFAULT_HOST, DEFAULT_PORT


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = p.add_argument
    add("-m", "--model_path", action="append", required=True, help="generator checkpoint G_*.pth (repeatable)")
    add("-c", "--config_path", action="append", required=True, help="its config.json, one per -m")
    add("--name", action="append", help="the name clients use for each model, in -m order (default: file stem)")
    add("-cm", "--cluster_model_path", action="append",
        help="k-means model or feature index (-fr) for each model, in -m order ('' for none)")
    add("-fr", "--feature_retrieval", action="store_true", help="the -cm files are feature indexes")
    add("--host", default=DEFAULT_HOST, help="address to listen on (default: loopback only)")
    add("--port", type=int_range(1, 65535), default=DEFAULT_PORT, help="port (4.1's and the VST plugin's: 6842)")
    add("--max_upload_mb", type=finite_float(0, open_low=True), default=50, help="largest request body accepted, in MB")
    add("--max_seconds", type=finite_float(0, open_low=True), default=600,
        help="longest audio accepted per request, in seconds")
    add("--header_timeout", type=finite_float(0, open_low=True), default=30,
        help="seconds a connection may take to send a request's headers before it is closed")
    add("--body_timeout", type=finite_float(0, open_low=True), default=30,
        help="seconds an upload may pause (no byte arriving) before its connection is closed")
    add("--pretrain_dir", default="pretrain", help="folder of the pretrained encoders and f0 predictors")
    add("-d", "--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    add("--precision", default="auto", choices=PRECISIONS, help=PRECISION_HELP)
    return p


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if len(args.model_path) != len(args.config_path):
        parser.error(f"give one -c/--config_path per -m/--model_path ({len(args.model_path)} -m, "
                     f"{len(args.config_path)} -c)")
    for flag, values in (("--name", args.name), ("-cm/--cluster_model_path", args.cluster_model_path)):
        if values and len(values) > len(args.model_path):
            parser.error(f"{flag} is given {len(values)} times for {len(args.model_path)} models")
    if not 0 < args.port < 65536:
        parser.error("--port must lie within 1..65535")
    if args.max_upload_mb <= 0 or args.max_seconds <= 0:
        parser.error("--max_upload_mb and --max_seconds must be positive")


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    check_args(parser, args)
    from server.run import serve
    serve(args)


if __name__ == "__main__":
    run_cli(main)
