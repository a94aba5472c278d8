"""Export a trained model for MoeVoiceStudio: `checkpoints/<name>/<name>_SoVits.onnx` + `checkpoints/<name>.json`.

4.1's CLI (`-n NAME` reads checkpoints/NAME/model.pth and config.json), plus explicit paths, cluster files,
the content-encoder ONNX, and a parity check of every exported graph against the torch model.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from core.cli_types import finite_float, int_range
from core.config import load_model_config
from core.errors import SvcError, run_cli
from onnxexport.descriptor import hubert_name


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", "--model_name", default="TransformerFlow",
                        help="project name: reads checkpoints/NAME/model.pth and config.json, writes "
                             "checkpoints/NAME/NAME_SoVits.onnx and checkpoints/NAME.json")
    parser.add_argument("-m", "--model_path", type=Path,
                        help="generator checkpoint (default checkpoints/NAME/model.pth)")
    parser.add_argument("-c", "--config_path", type=Path, help="config.json (default checkpoints/NAME/config.json)")
    parser.add_argument("-o", "--output_dir", type=Path, default=Path("checkpoints"),
                        help="where NAME/ and NAME.json go (default checkpoints)")
    parser.add_argument("--plain_sid", action="store_true",
                        help="multi-speaker model: int64 speaker index input instead of the per-frame mix "
                             "matrix (CharaMix false)")
    parser.add_argument("--source_noise", action="store_true",
                        help="keep 4.1's random sine phases and source noise in the graph (non-deterministic "
                             "output; the default graph is deterministic)")
    parser.add_argument("--kmeans", type=Path, help="cluster model kmeans_10000.pt to convert to KMeans.npy")
    parser.add_argument("--index", type=Path, help="feature_and_index.pkl to convert to Index-<i>.index files")
    parser.add_argument("--no_cluster", action="store_true",
                        help="do not pick up a kmeans_10000.pt / feature_and_index.pkl lying beside the model")
    parser.add_argument("--hubert", help="content-encoder name for the descriptor (default: from speech_encoder)")
    parser.add_argument("--export_encoder", action="store_true",
                        help="also export the content encoder to OUTPUT_DIR/hubert/<Hubert>.onnx")
    parser.add_argument("--encoder_only", action="store_true",
                        help="only export the content encoder (name from --hubert or the config)")
    parser.add_argument("--encoder_checkpoint", type=Path, help="ContentVec checkpoint for the encoder export")
    parser.add_argument("--parity_frames", type=int_range(1), nargs="+", help="frame counts the parity check runs at")
    parser.add_argument("--tolerance", type=finite_float(0), help="largest allowed parity difference")
    parser.add_argument("--opset", type=int_range(1), help="ONNX opset")
    return parser.parse_args()


def fill_export_defaults(args: argparse.Namespace) -> None:
    """The defaults that live beside the torch export code, read only once --help is out of the way."""
    from onnxexport.export import DEFAULT_ENCODER_CHECKPOINT, PARITY_FRAMES
    from onnxexport.graph import OPSET
    from onnxexport.parity import TOLERANCE

    defaults = {"encoder_checkpoint": DEFAULT_ENCODER_CHECKPOINT, "parity_frames": list(PARITY_FRAMES),
                "tolerance": TOLERANCE, "opset": OPSET}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)


def main() -> None:
    args = parse_args()
    fill_export_defaults(args)
    from onnxexport.export import ExportOptions, export_encoder_file, export_for_moevs

    project = Path("checkpoints") / args.model_name
    config_path = args.config_path or project / "config.json"
    if args.encoder_only:
        name = args.hubert or hubert_name(load_model_config(config_path)["model"])
        path, _ = export_encoder_file(args.encoder_checkpoint, name, args.output_dir, args.opset,
                                          args.tolerance, overwrite=True)
        print(f"encoder: {path}")
        return
    if min(args.parity_frames) < 1:
        raise SvcError("--parity_frames values must be positive frame counts")
    result = export_for_moevs(ExportOptions(
        name=args.model_name, model_path=args.model_path or project / "model.pth", config_path=config_path,
        output_dir=args.output_dir, plain_sid=args.plain_sid, source_noise=args.source_noise, kmeans=args.kmeans,
        index=args.index, no_cluster=args.no_cluster, hubert=args.hubert, export_encoder=args.export_encoder,
        encoder_checkpoint=args.encoder_checkpoint, parity_frames=tuple(args.parity_frames),
        tolerance=args.tolerance, opset=args.opset))
    print(f"model: {result.onnx}\ndescriptor: {result.descriptor}")
    for path in result.cluster_files:
        print(f"cluster: {path}")
    if result.encoder:
        print(f"encoder: {result.encoder}")


if __name__ == "__main__":
    run_cli(main)
