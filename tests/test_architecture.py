"""The import rules of ARCHITECTURE.md: packages import only their own layer's lower layers, never a script."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LAYERS = {
    "core": 0, "modules": 1, "vencoder": 2, "f0_predictor": 2, "vdecoder": 2,
    "models": 3, "diffusion": 3, "cluster": 3, "evaluation": 3,
    "preprocess": 4, "training": 4, "inference": 4, "onnxexport": 4,
    "server": 5, "quality": 5, "workflows": 5, "webui": 5,
}
ENTRY_SCRIPTS = {path.stem for path in REPO.glob("*.py")} - {"models"}


def imported_roots(path: Path) -> set[str]:
    """The top-level names a file imports (absolute imports only; the project uses no relative ones)."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def package_files() -> list[tuple[str, Path]]:
    files = [("models", REPO / "models.py")]
    for package in LAYERS:
        if package != "models":
            files += [(package, path) for path in sorted((REPO / package).rglob("*.py"))]
    return files


@pytest.mark.parametrize("package, path", package_files(), ids=lambda value: str(value).replace(str(REPO), ""))
def test_imports_follow_the_layers(package, path):
    """A package imports only packages of lower layers (modules of the same family within itself)."""
    own = LAYERS[package]
    for root in imported_roots(path) & set(LAYERS):
        if root == package:
            continue
        assert LAYERS[root] < own, f"{path.relative_to(REPO)} ({package}, layer {own}) imports {root} " \
                                   f"(layer {LAYERS[root]})"


@pytest.mark.parametrize("package, path", package_files(), ids=lambda value: str(value).replace(str(REPO), ""))
def test_library_code_never_imports_an_entry_script(package, path):
    assert not imported_roots(path) & ENTRY_SCRIPTS, path.relative_to(REPO)


def test_every_package_has_a_layer():
    packages = {path.parent.name for path in REPO.glob("*/__init__.py")} - {"tests", "bench"}
    assert packages <= set(LAYERS), packages - set(LAYERS)
