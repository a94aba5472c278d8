"""An interpreter of the pickles in 4.1's object-array .npy files (f0, aug_mel) that builds every array itself.

numpy's own unpickling (`_reconstruct`, then `ndarray.__setstate__`) trusts the dtype, shape and bytes a file
gives it: an object dtype filled from raw bytes turns file bytes into pointers, and one crafted file crashes the
process. Here the opcodes are read one at a time, and the only globals a file may name are stand-ins defined in
this module for numpy's array, dtype, scalar and buffer reconstruction (and `_codecs.encode`, which protocol 2
uses for bytes). The arrays are made by this module from checked parts:

- an object array only from the list of its elements (what a genuine file holds), into `np.empty(n, object)`;
  raw bytes for an object dtype are refused;
- a number array (dtype kinds b, i, u, f) of at most `MAX_DIMS` dimensions and `MAX_ELEMENTS` elements, whose
  bytes are exactly shape x itemsize, through `np.frombuffer(...).reshape(...).copy()`.

Every array made is charged to a budget of the pickle's own size, so that a value memoised once and reused many
times cannot make a small file take much memory. Nothing else is ever called.
"""
from __future__ import annotations

import math
import re
import struct
from typing import Any, Callable

import numpy as np

MAX_DIMS = 2
MAX_ELEMENTS = 2 ** 27
BUDGET_SLACK = 2 ** 20  # bytes an array may take beyond the pickle's size: small arrays from tiny pickles
_DTYPE_CODE = re.compile(r"([biufO])([0-9]{1,2})")
_SIZES = {"b": (1,), "i": (1, 2, 4, 8), "u": (1, 2, 4, 8), "f": (2, 4, 8), "O": (4, 8)}
_BYTE_ORDERS = ("<", ">", "|", "=")


class PickleRefused(Exception):
    """The pickle is damaged or holds what array files never do; the message completes "its pickle ..."."""


class CodeReference(Exception):
    """The pickle names a global other than the stand-ins, or a persistent id: the message says which."""


def load_numpy_pickle(data: bytes) -> Any:
    """The value pickled in `data`, built by this module's stand-ins (PickleRefused, CodeReference)."""
    return _Machine(data).run()


# ---------------------------------------------------------------- what a file can build

class _Global:
    """A global a file may name: one of this module's stand-ins, called by REDUCE with the file's arguments."""

    def __init__(self, name: str, build: Callable[..., Any] | None):
        self.name, self.build = name, build


class _Dtype:
    """A dtype rebuilt from its code ('f8', 'O8') and the byte order that BUILD gives it."""

    def __init__(self, code: str):
        match = _DTYPE_CODE.fullmatch(code)
        if not match or int(match[2]) not in _SIZES[match[1]]:
            raise PickleRefused(f"names the dtype {code[:20]!r}; feature files hold only numbers and objects")
        self.is_object = match[1] == "O"
        self.dtype = None if self.is_object else np.dtype(code)

    def set_state(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (8, 9) or state[0] not in (3, 4):
            raise PickleRefused("has a damaged dtype state")
        order = state[1]
        if order not in _BYTE_ORDERS or any(part is not None for part in (*state[2:5], *state[8:])):
            raise PickleRefused("has a dtype with fields, a sub-array or metadata; feature files hold plain numbers")
        if self.dtype is not None and order != "|":
            self.dtype = self.dtype.newbyteorder(order)


class _Array:
    """What `_reconstruct` returns: an array whose shape, dtype and contents come with BUILD."""

    def __init__(self) -> None:
        self.value: np.ndarray | None = None

    def set_state(self, state: Any, machine: _Machine) -> None:
        if self.value is not None:
            raise PickleRefused("sets the state of one array twice")
        if not isinstance(state, tuple) or len(state) not in (4, 5) or (len(state) == 5 and state[0] != 1):
            raise PickleRefused("has a damaged array state")
        shape, dtype, fortran, contents = state[-4:]
        if not isinstance(dtype, _Dtype) or not isinstance(fortran, bool):
            raise PickleRefused("has a damaged array state")
        order = "F" if fortran else "C"
        if dtype.is_object:
            self.value = _object_array(contents, _checked_shape(shape), order, machine)
        else:
            value = _number_array(contents, dtype, shape, order, machine)
            native = value.dtype.isnative  # numpy's __setstate__ swaps the bytes into the machine's order
            self.value = value if native else value.astype(value.dtype.newbyteorder("="), order="K")


def _checked_shape(shape: Any) -> tuple[int, ...]:
    if not isinstance(shape, tuple) or not all(type(n) is int and n >= 0 for n in shape):
        raise PickleRefused("has an array shape that is not a tuple of sizes")
    if len(shape) > MAX_DIMS:
        raise PickleRefused(f"has an array of {len(shape)} dimensions; feature files have at most {MAX_DIMS}")
    if math.prod(shape) > MAX_ELEMENTS:
        raise PickleRefused(f"has an array of {math.prod(shape)} elements; at most {MAX_ELEMENTS} are read")
    return shape


def _number_array(contents: Any, dtype: _Dtype, shape: Any, order: str, machine: _Machine) -> np.ndarray:
    """An array of numbers from exactly shape x itemsize bytes, copied out of the pickle."""
    shape = _checked_shape(shape)
    if not isinstance(contents, bytes):
        raise PickleRefused("gives a number array something other than its bytes")
    count, itemsize = math.prod(shape), dtype.dtype.itemsize
    if len(contents) != count * itemsize:
        raise PickleRefused(f"gives an array of {count} values of {itemsize} bytes {len(contents)} bytes")
    machine.charge(len(contents))
    if count == 0:
        return np.empty(shape, dtype.dtype, order=order)
    return np.frombuffer(contents, dtype.dtype, count).reshape(shape, order=order).copy(order="K")


def _object_array(contents: Any, shape: tuple[int, ...], order: str, machine: _Machine) -> np.ndarray:
    """An object array filled one element at a time from the list a genuine file holds."""
    if not isinstance(contents, list):
        raise PickleRefused("gives an object array raw bytes instead of a list of its elements")
    count = math.prod(shape)
    if len(contents) != count:
        raise PickleRefused(f"gives an object array of {count} elements a list of {len(contents)}")
    machine.charge(8 * count)
    flat = np.empty(count, dtype=object)
    for index, element in enumerate(contents):
        flat[index] = element
    return flat.reshape(shape, order=order)


def _reconstruct(cls: Any, shape: Any = None, typecode: Any = None) -> _Array:
    if not (isinstance(cls, _Global) and cls.name == "numpy.ndarray"):
        raise PickleRefused("rebuilds an array of a class other than numpy.ndarray")
    return _Array()


def _dtype(code: Any, align: Any = False, copy: Any = True) -> _Dtype:
    if not isinstance(code, str):
        raise PickleRefused("names a dtype without a code")
    return _Dtype(code)


def _scalar(dtype: Any, contents: Any = None) -> np.generic:
    """A numpy number from exactly itemsize bytes (numpy's `scalar`); never an object scalar."""
    if not isinstance(dtype, _Dtype) or dtype.is_object:
        raise PickleRefused("rebuilds a scalar that is not a number")
    if not isinstance(contents, bytes) or len(contents) != dtype.dtype.itemsize:
        raise PickleRefused(f"gives a scalar of {dtype.dtype.itemsize} bytes other contents")
    return np.frombuffer(contents, dtype.dtype, 1)[0]


def _frombuffer_for(machine: _Machine) -> Callable[..., np.ndarray]:
    def frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any, axis_order: Any = None) -> np.ndarray:
        """numpy's protocol-5 `_frombuffer`, for number arrays only."""
        if not isinstance(dtype, _Dtype) or dtype.is_object or order not in ("C", "F", "K"):
            raise PickleRefused("rebuilds a buffer array that is not of numbers")
        if order != "K":
            return _number_array(buffer, dtype, shape, order, machine)
        array = _number_array(buffer, dtype, shape, "C", machine)
        if not isinstance(axis_order, tuple) or sorted(axis_order) != list(range(array.ndim)):
            raise PickleRefused("has a damaged axis order")
        return array.transpose(axis_order)

    return frombuffer


def _encode_for(machine: _Machine) -> Callable[..., bytes]:
    def encode(text: Any, encoding: Any = "utf-8") -> bytes:
        """`_codecs.encode(text, 'latin1')`: how protocol 2 writes bytes."""
        if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
            raise PickleRefused("encodes something other than latin-1 bytes")
        try:
            contents = text.encode("latin1")
        except UnicodeEncodeError:
            raise PickleRefused("encodes text that is not latin-1") from None
        machine.charge(len(contents))
        return contents

    return encode


# ---------------------------------------------------------------- the opcodes

_MULTIARRAY = ("numpy._core.multiarray", "numpy.core.multiarray")  # numpy 2 and numpy 1
_NUMERIC = ("numpy._core.numeric", "numpy.core.numeric")
STAND_INS = frozenset({
    "numpy.ndarray", "numpy.dtype", "_codecs.encode", "numpy._core.multiarray._reconstruct",
    "numpy.core.multiarray._reconstruct", "numpy._core.multiarray.scalar", "numpy.core.multiarray.scalar",
    "numpy._core.numeric._frombuffer", "numpy.core.numeric._frombuffer"})  # the globals a file may name


class _Machine:
    """The pickle virtual machine, reduced to the opcodes numpy's arrays use (protocols 2 to 5)."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0
        self.stack: list[Any] = []
        self.marks: list[list[Any]] = []
        self.memo: dict[int, Any] = {}
        self.budget = len(data) + BUDGET_SLACK
        self.globals = self._stand_ins()
        self.ops: dict[int, Callable[[], None]] = {ord(code): op for code, op in self._opcodes().items()}

    def _stand_ins(self) -> dict[tuple[str, str], Callable[..., Any] | None]:
        stand_ins: dict[tuple[str, str], Callable[..., Any] | None] = {
            ("numpy", "ndarray"): None, ("numpy", "dtype"): _dtype, ("_codecs", "encode"): _encode_for(self)}
        for module in _MULTIARRAY:
            stand_ins[module, "_reconstruct"], stand_ins[module, "scalar"] = _reconstruct, _scalar
        for module in _NUMERIC:
            stand_ins[module, "_frombuffer"] = _frombuffer_for(self)
        return stand_ins

    def charge(self, size: int) -> None:
        self.budget -= size
        if self.budget < 0:
            raise PickleRefused("builds more array data than the file holds")

    def run(self) -> Any:
        data, ops = self.data, self.ops
        while self.pos < len(data):
            code = data[self.pos]
            self.pos += 1
            if code == 0x2E:  # STOP
                return self._stop()
            op = ops.get(code)
            if op is None:
                raise PickleRefused(f"uses the opcode {_opcode_name(code)}, which array files never use")
            op()
        raise PickleRefused("ends before its STOP opcode")

    def _stop(self) -> Any:
        value = self._value(self._pop())
        if self.stack or self.marks:
            raise PickleRefused("leaves values on its stack")
        if self.pos != len(self.data):
            raise PickleRefused(f"is followed by {len(self.data) - self.pos} more bytes")
        return value

    # -- reading arguments

    def _take(self, size: int) -> bytes:
        end = self.pos + size
        if size < 0 or end > len(self.data):
            raise PickleRefused("ends in the middle of an opcode")
        chunk, self.pos = self.data[self.pos:end], end
        return chunk

    def _unpack(self, layout: str) -> Any:
        return struct.unpack(layout, self._take(struct.calcsize(layout)))[0]

    def _line(self) -> str:
        end = self.data.find(b"\n", self.pos)
        if end < 0:
            raise PickleRefused("ends in the middle of an opcode")
        line, self.pos = self.data[self.pos:end], end + 1
        try:
            return line.decode("ascii")
        except UnicodeDecodeError:
            raise PickleRefused("has a text argument that is not ASCII") from None

    def _text(self, size: int) -> str:
        try:
            return self._take(size).decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            raise PickleRefused("has a string that is not UTF-8") from None

    def _number(self, text: str, kind: type) -> Any:
        try:
            return kind(text)
        except ValueError:
            raise PickleRefused("has a damaged number") from None

    # -- the stack

    def _push(self, value: Any) -> None:
        self.stack.append(value)

    def _pop(self) -> Any:
        if not self.stack:
            raise PickleRefused("pops from an empty stack")
        return self.stack.pop()

    def _top(self) -> Any:
        if not self.stack:
            raise PickleRefused("uses the top of an empty stack")
        return self.stack[-1]

    def _pop_mark(self) -> list[Any]:
        if not self.marks:
            raise PickleRefused("closes a mark that was never opened")
        items, self.stack = self.stack, self.marks.pop()
        return [self._value(item) for item in items]

    def _value(self, item: Any) -> Any:
        """What an item stands for once it goes into a container: an array built from its state."""
        if isinstance(item, _Array):
            if item.value is None:
                raise PickleRefused("uses an array before its state is set")
            return item.value
        return item

    def _pop_values(self, count: int) -> tuple[Any, ...]:
        if len(self.stack) < count:
            raise PickleRefused("pops from an empty stack")
        items = self.stack[len(self.stack) - count:]
        del self.stack[len(self.stack) - count:]
        return tuple(self._value(item) for item in items)

    # -- the opcodes

    def _opcodes(self) -> dict[str, Callable[[], None]]:
        return {
            "\x80": self._proto, "\x95": lambda: self._take(8), "(": self._mark, "0": self._pop,
            "1": self._pop_mark, "2": lambda: self._push(self._top()),
            "p": lambda: self._put(self._number(self._line(), int)), "q": lambda: self._put(self._unpack("<B")),
            "r": lambda: self._put(self._unpack("<I")), "\x94": lambda: self._put(len(self.memo)),
            "g": lambda: self._get(self._number(self._line(), int)), "h": lambda: self._get(self._unpack("<B")),
            "j": lambda: self._get(self._unpack("<I")),
            "c": lambda: self._global(self._line(), self._line()), "\x93": self._stack_global,
            "i": lambda: self._refuse_code(f"{self._line()}.{self._line()}"),
            **{code: lambda: self._refuse_code("an extension code") for code in ("\x82", "\x83", "\x84")},
            "P": lambda: self._refuse_code("a persistent id"), "Q": lambda: self._refuse_code("a persistent id"),
            "R": self._reduce, "b": self._build,
            "t": lambda: self._push(tuple(self._pop_mark())), ")": lambda: self._push(()),
            "\x85": lambda: self._push(self._pop_values(1)), "\x86": lambda: self._push(self._pop_values(2)),
            "\x87": lambda: self._push(self._pop_values(3)),
            "]": lambda: self._push([]), "l": lambda: self._push(self._pop_mark()), "a": self._append,
            "e": self._appends,
            "N": lambda: self._push(None), "\x88": lambda: self._push(True), "\x89": lambda: self._push(False),
            "I": self._int, "J": lambda: self._push(self._unpack("<i")), "K": lambda: self._push(self._unpack("<B")),
            "M": lambda: self._push(self._unpack("<H")), "L": self._long,
            "\x8a": lambda: self._push(self._long_bytes(self._unpack("<B"))),
            "\x8b": lambda: self._push(self._long_bytes(self._unpack("<i"))),
            "F": lambda: self._push(self._number(self._line(), float)), "G": lambda: self._push(self._unpack(">d")),
            "\x8c": lambda: self._push(self._text(self._unpack("<B"))),
            "X": lambda: self._push(self._text(self._unpack("<I"))),
            "\x8d": lambda: self._push(self._text(self._unpack("<Q"))),
            "C": lambda: self._push(self._take(self._unpack("<B"))),
            "B": lambda: self._push(self._take(self._unpack("<I"))),
            "\x8e": lambda: self._push(self._take(self._unpack("<Q"))),
            "\x96": lambda: self._push(self._take(self._unpack("<Q"))),
        }

    def _proto(self) -> None:
        if self._unpack("<B") not in (2, 3, 4, 5):
            raise PickleRefused("has a protocol other than 2 to 5")

    def _mark(self) -> None:
        self.marks.append(self.stack)
        self.stack = []

    def _put(self, index: int) -> None:
        self.memo[index] = self._top()

    def _get(self, index: int) -> None:
        if index not in self.memo:
            raise PickleRefused("refers to a memo entry that was never stored")
        self._push(self.memo[index])

    def _global(self, module: str, name: str) -> None:
        key = (module, name)
        if key not in self.globals:
            self._refuse_code(f"{module}.{name}")
        self._push(_Global(f"{module}.{name}", self.globals[key]))

    def _stack_global(self) -> None:
        name, module = self._pop(), self._pop()
        if not isinstance(module, str) or not isinstance(name, str):
            raise PickleRefused("names a global with something other than text")
        self._global(module, name)

    def _refuse_code(self, what: str) -> None:
        raise CodeReference(what)

    def _reduce(self) -> None:
        arguments, function = self._pop(), self._pop()
        if not isinstance(function, _Global) or function.build is None or not isinstance(arguments, tuple):
            raise PickleRefused("calls something that is not one of numpy's array builders")
        try:
            self._push(function.build(*arguments))
        except TypeError:
            raise PickleRefused(f"calls {function.name} with the wrong arguments") from None

    def _build(self) -> None:
        state, target = self._pop(), self._top()
        if isinstance(target, _Array):
            target.set_state(state, self)
        elif isinstance(target, _Dtype):
            target.set_state(state)
        else:
            raise PickleRefused("sets the state of something that is not an array or dtype")

    def _append(self) -> None:
        value, target = self._value(self._pop()), self._top()
        if not isinstance(target, list):
            raise PickleRefused("appends to something that is not a list")
        target.append(value)

    def _appends(self) -> None:
        items = self._pop_mark()
        target = self._top()
        if not isinstance(target, list):
            raise PickleRefused("appends to something that is not a list")
        target.extend(items)

    def _int(self) -> None:
        text = self._line()
        self._push(text == "01" if text in ("00", "01") else self._number(text, int))

    def _long(self) -> None:
        self._push(self._number(self._line().removesuffix("L"), int))

    def _long_bytes(self, size: int) -> int:
        return int.from_bytes(self._take(size), "little", signed=True)


def _opcode_name(code: int) -> str:
    import pickletools

    names = {ord(op.code): op.name for op in pickletools.opcodes}
    return names.get(code, f"0x{code:02x}")


_PUSHES_TEXT = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING",
                "SHORT_BINSTRING"}
_MEMO_GETS = {"GET", "BINGET", "LONG_BINGET"}
_MEMO_PUTS = {"PUT", "BINPUT", "LONG_BINPUT"}


def named_globals(data: bytes) -> list[str]:
    """Every global `data` names, read from its opcodes without running them; the scan stops where the
    opcodes stop being valid. STACK_GLOBAL's module and name are the two values pushed just before it,
    written there or fetched from the memo (as numpy's pickles do)."""
    import pickletools

    names: list[str] = []
    pushed: list[Any] = []
    memo: dict[Any, Any] = {}
    try:
        for opcode, argument, _ in pickletools.genops(data):
            if opcode.name in ("GLOBAL", "INST"):
                names.append(str(argument).replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL":
                names.append(".".join(str(part) for part in pushed[-2:]))
            if opcode.name == "MEMOIZE":
                memo[len(memo)] = pushed[-1] if pushed else None
            elif opcode.name in _MEMO_PUTS:
                memo[argument] = pushed[-1] if pushed else None
            else:
                pushed.append(memo.get(argument) if opcode.name in _MEMO_GETS else
                              argument if opcode.name in _PUSHES_TEXT else None)
            if opcode.name == "STOP":
                break
    except ValueError:
        pass
    return names
