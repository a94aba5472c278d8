"""Load torch checkpoints that pickle a few foreign classes, without importing or running anything from them.

fairseq checkpoints (ContentVec, HuBERT, Chinese HuBERT) pickle an `argparse.Namespace` (old files), a
`fairseq.data.dictionary.Dictionary` and sometimes omegaconf containers, so `torch.load(weights_only=True)`
refuses them. `load_checkpoint` tries that safe load first and otherwise reads the file with
`RestrictedUnpickler`: tensors, plain containers and the listed class names, which become `InertObject`
stand-ins that only keep their pickled data. Any other global in the file raises UnsafeFileError naming it,
before anything from it is called.
"""
from __future__ import annotations

import _compat_pickle
import os
import pickle
import types
from pathlib import Path
from typing import Any, Mapping

import torch

from core.errors import SvcError, UnsafeFileError
from core.fileio import DAMAGED_FILE_ERRORS, damaged, safe_torch_load, torch_load_source


class InertObject:
    """Stand-in for a pickled instance of a class we never import: it keeps the pickled data, nothing else.

    Whatever way the pickle builds the object (called with arguments, `__new__` + state), the arguments
    end up in `args`/`kwargs` and the state in `state`; no method of the original class exists here.
    """

    origin = "object"  # "module.Class" this stands in for

    def __init__(self, *args: Any, **kwargs: Any):
        self.args = args
        self.kwargs = kwargs

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def attributes(self) -> dict:
        """The pickled instance attributes (`__dict__`), or {} when the state was not a dict."""
        state = getattr(self, "state", None)
        if isinstance(state, tuple) and len(state) == 2:  # (__dict__, __slots__ state)
            state = {**(state[0] or {}), **(state[1] or {})}
        return dict(state) if isinstance(state, dict) else {}

    def __repr__(self) -> str:
        return f"<inert {self.origin}>"


class FairseqDictionary(InertObject):
    origin = "fairseq.data.dictionary.Dictionary"


class Namespace(InertObject):
    origin = "argparse.Namespace"


class OmegaConfDict(InertObject):
    origin = "omegaconf.dictconfig.DictConfig"


class OmegaConfList(InertObject):
    origin = "omegaconf.listconfig.ListConfig"


class OmegaConfNode(InertObject):
    origin = "omegaconf.nodes.ValueNode"


class OmegaConfMetadata(InertObject):
    origin = "omegaconf.base.Metadata"


# Stand-ins a fairseq checkpoint may need: its task dictionary, old-style args, omegaconf configs.
FAIRSEQ_STAND_INS: Mapping[str, type[InertObject]] = types.MappingProxyType({
    "fairseq.data.dictionary.Dictionary": FairseqDictionary,
    "argparse.Namespace": Namespace,
    "omegaconf.dictconfig.DictConfig": OmegaConfDict,
    "omegaconf.listconfig.ListConfig": OmegaConfList,
    **{f"omegaconf.nodes.{node}": OmegaConfNode
       for node in ("AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode", "BytesNode", "PathNode")},
    "omegaconf.base.Metadata": OmegaConfMetadata,
    "omegaconf.base.ContainerMetadata": OmegaConfMetadata,
})

# Real globals a checkpoint may need. Each only builds tensors, numbers or containers from the pickled data;
# `typing.Any` and the builtin types appear as omegaconf metadata (ref_type, key_type, ...).
SAFE_GLOBALS = frozenset({
    "collections.OrderedDict",
    "collections.defaultdict",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_tensor",
    "torch._utils._rebuild_parameter",
    "torch.Size",
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray.scalar",
    "numpy.dtype",
    "typing.Any",
    *(f"builtins.{name}" for name in ("dict", "list", "tuple", "set", "frozenset", "str", "bytes", "int", "float",
                                      "bool", "complex", "object")),
})


class RestrictedUnpickler(pickle._Unpickler):
    """Unpickler that resolves only tensor-rebuild helpers, plain containers, and the given stand-ins.

    `stand_ins` maps "module.Class" to an InertObject subclass; anything else raises UnsafeFileError
    (the pickle never gets hold of a callable it could use to run code). It is pickle's Python unpickler:
    the C one sizes its memo by the largest index a PUT opcode names, so one damaged index asks for
    gigabytes; the Python one keeps the memo in a dict.
    """

    stand_ins: Mapping[str, type[InertObject]] = types.MappingProxyType({})
    source = "the file"

    def find_class(self, module: str, name: str) -> Any:
        # protocol-2 pickles may use Python 2 names (__builtin__.dict, __builtin__.long): map them as pickle does
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        qualified = f"{module}.{name}"
        if qualified in self.stand_ins:
            return self.stand_ins[qualified]
        if qualified in SAFE_GLOBALS:
            return super().find_class(module, name)
        raise UnsafeFileError(
            f"{self.source} holds <{qualified}>, which is not allowed in this kind of file; it was not loaded, "
            "because loading it could run code from the file. Use the original file from its official source."
        )


def _restricted_pickle_module(stand_ins: Mapping[str, type[InertObject]], source: str) -> types.SimpleNamespace:
    """A `pickle_module` for torch.load whose Unpickler is RestrictedUnpickler bound to `stand_ins`."""
    unpickler = type("BoundRestrictedUnpickler", (RestrictedUnpickler,),
                     {"stand_ins": types.MappingProxyType(dict(stand_ins)), "source": source})

    def load(file: Any, **kwargs: Any) -> Any:
        return unpickler(file, **kwargs).load()

    return types.SimpleNamespace(__name__="restricted_pickle", Unpickler=unpickler, load=load,
                                 UnpicklingError=pickle.UnpicklingError)


def load_checkpoint(path: str | os.PathLike, stand_ins: Mapping[str, type[InertObject]] | None = None) -> Any:
    """Read a torch file on CPU without executing code from it.

    First `safe_torch_load` (weights_only=True; a zip file's directory checked, a legacy file read from
    memory); if the file needs other globals, it is read again with RestrictedUnpickler, which admits
    `stand_ins` (as inert objects) and refuses anything else with UnsafeFileError. Unreadable files raise
    SvcError (DamagedFileError for a damaged one).
    """
    path = Path(path)
    try:
        return safe_torch_load(path, mmap=True)  # zip checkpoints are memory-mapped: no second copy of the weights
    except UnsafeFileError:
        pass
    source, is_zip = torch_load_source(path)
    module = _restricted_pickle_module(stand_ins or {}, str(path))
    try:
        return torch.load(source, map_location="cpu", weights_only=False, mmap=is_zip, pickle_module=module)
    except SvcError:
        raise
    except DAMAGED_FILE_ERRORS as error:
        raise damaged(path, _first_line(error)) from None


def to_plain(value: Any) -> Any:
    """Turn omegaconf stand-ins (and containers holding them) into plain dicts/lists/values."""
    if isinstance(value, (OmegaConfDict, OmegaConfList, OmegaConfNode)):
        attributes = value.attributes()
        if "_content" in attributes:
            return to_plain(attributes["_content"])
        return to_plain(attributes.get("_val"))
    if isinstance(value, Namespace):
        return {key: to_plain(item) for key, item in value.attributes().items()}
    if isinstance(value, dict):
        return {key: to_plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(item) for item in value]
    return value


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
