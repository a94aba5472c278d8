"""Convert, mix, compress, export and watch training in the browser: `python webUI.py`, then open the address shown.

    python webUI.py                        # http://127.0.0.1:7860, models from logs/
    python webUI.py --port 8000 --logs_dir logs -d cpu

Tabs: Convert (a model from --logs_dir or uploaded, every inference_main.py option, upload or microphone,
result to play and download, pitch figure), Tools (static model mix, compress, ONNX export, k-means /
feature index) and Train (latest checkpoint, loss curves, preprocessing and training as subprocesses).
The page listens on 127.0.0.1 only unless --host says otherwise; it never makes a share link.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from core.cli_types import check_device, finite_float, int_range
from core.errors import run_cli
from inference.precision import PRECISION_HELP, PRECISIONS, check_device_type

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = p.add_argument
    add("--host", default=DEFAULT_HOST, help="address to listen on (default: loopback only)")
    add("--port", type=int_range(1, 65535), default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    add("--logs_dir", type=Path, default=Path("logs"), help="folder of the model folders (train.py's logs/)")
    add("--pretrain_dir", type=Path, default=Path("pretrain"), help="folder of the pretrained encoders and vocoder")
    add("--results_dir", type=Path, default=Path("results"), help="where conversions are saved")
    add("--dataset_dir", type=Path, default=Path("dataset/44k"), help="preprocessed dataset (features, k-means)")
    add("--raw_dir", type=Path, default=Path("dataset_raw"), help="raw dataset, one folder per speaker")
    add("--config_dir", type=Path, default=Path("configs"), help="where preprocessing writes config.json")
    add("--export_dir", type=Path, default=Path("checkpoints"), help="where ONNX exports go")
    add("--max_seconds", type=finite_float(0, open_low=True), default=600,
        help="longest recording the page converts, in seconds")
    add("-d", "--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    add("--precision", default="auto", choices=PRECISIONS, help=PRECISION_HELP)
    return p


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    if args.device:
        check_device_type(args.precision, args.device.split(":")[0])
    check_device(args.device)
    from webui.app import WebSettings, serve

    settings = WebSettings(logs_dir=args.logs_dir, pretrain_dir=args.pretrain_dir, results_dir=args.results_dir,
                           dataset_dir=args.dataset_dir, raw_dir=args.raw_dir, config_dir=args.config_dir,
                           export_dir=args.export_dir, device=args.device, precision=args.precision,
                           max_seconds=args.max_seconds)
    serve(settings, args.host, args.port)


if __name__ == "__main__":
    run_cli(main)
