"""ONNX export of So-VITS 4.1 models for MoeVoiceStudio (spec §15, moevoicestudio.md).

- `graph`: the export forward (`SovitsOnnx`) over the trained model's submodules, and the tracer call.
- `source`: the frame-rate NSF sine source used in the graph, and 4.1's sample-rate reference.
- `parity`: MoeVS-style inputs, ONNX Runtime runs, and the comparison with `SynthesizerTrn.infer`.
- `descriptor`: the `<Name>.json` fields; `cluster`: KMeans.npy / Index-<i>.index; `encoder`: ContentVec ONNX.
- `export`: the whole export as `onnx_export.py` runs it.
"""
