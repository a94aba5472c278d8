"""Seeded mutation fuzzing of the readers of files users and clients supply, each run in a child process.

`fuzz_reader("core.feature_io:load_f0", [seed_file], cases=2000, seed=1)` writes `cases` mutations of the seed
files one after another to a temporary file and calls the reader on each, in a fresh interpreter whose address
space is capped (`memory_mb` above what it holds after the imports). A case passes when the reader returns, or
raises the project's error (`core.errors.SvcError`) with a one-line message. It fails on any other exception
(MemoryError included: the cap turns an unbounded allocation into one), on a case that runs past
`case_seconds`, and on a signal that kills the child (a segfault): the report names the case, and the input
that killed the child is kept for reproducing it (`FuzzReport.crash_input`).

Mutations are byte-level (bit flips, interesting integers written over the bytes, truncation, insertion,
deletion, duplication of a chunk) for binary formats, and with `mutator="json"` also structural for JSON and
YAML texts (values replaced by other types, huge or non-finite numbers, deep nesting, keys dropped).

Run one by hand: `python -m tests.fuzz core.feature_io:load_f0 SEED_FILE --cases 500 --seed 3`.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import random
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

REPO = Path(__file__).resolve().parent.parent

INTERESTING_BYTES = (0x00, 0x01, 0x7F, 0x80, 0xFF)
INTERESTING_INTS = (0, 1, -1, 0x7F, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 2 ** 31, 2 ** 40, 2 ** 62,
                    2 ** 63 - 1)
MAX_WALK_DEPTH = 200  # deeper than any seed and the 50-deep nesting; well below the recursion limit
INTERESTING_VALUES: tuple[Any, ...] = (None, True, False, 0, -1, 1e308, -1e308, 2 ** 63, -(2 ** 63), 1e-320, "",
                                       "16", "abc", "ü\u202e", [], {}, [1, "x", None], {"": None}, 0.5, 10 ** 30)


@dataclass
class FuzzReport:
    """What one fuzz run found: `failures` lists "case N: what happened"; empty when the reader held."""

    cases: int
    failures: list[str] = field(default_factory=list)
    crash_input: Path | None = None

    @property
    def ok(self) -> bool:
        return not self.failures

    def summary(self, shown: int = 10) -> str:
        head = f"{len(self.failures)} of {self.cases} cases failed"
        more = f" (input of the crash kept at {self.crash_input})" if self.crash_input else ""
        return "\n".join([head + more, *self.failures[:shown]])


# ---------------------------------------------------------------- mutations

def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    """1-3 stacked byte-level mutations of `data`."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        out = _BYTE_MUTATIONS[rng.randrange(len(_BYTE_MUTATIONS))](out, rng)
    return bytes(out)


def _flip_bits(data: bytearray, rng: random.Random) -> bytearray:
    for _ in range(rng.randint(1, 8)):
        if data:
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    return data


def _set_bytes(data: bytearray, rng: random.Random) -> bytearray:
    for _ in range(rng.randint(1, 4)):
        if data:
            data[rng.randrange(len(data))] = rng.choice(INTERESTING_BYTES)
    return data


def _set_integer(data: bytearray, rng: random.Random) -> bytearray:
    width = rng.choice((2, 4, 8))
    if len(data) < width:
        return data
    value = rng.choice(INTERESTING_INTS) % (1 << (8 * width))
    at = rng.randrange(len(data) - width + 1)
    data[at:at + width] = value.to_bytes(width, rng.choice(("little", "big")))
    return data


def _truncate(data: bytearray, rng: random.Random) -> bytearray:
    return data[:rng.randrange(len(data) + 1)]


def _insert(data: bytearray, rng: random.Random) -> bytearray:
    at = rng.randrange(len(data) + 1)
    return data[:at] + bytearray(rng.getrandbits(8) for _ in range(rng.randint(1, 64))) + data[at:]


def _delete(data: bytearray, rng: random.Random) -> bytearray:
    if not data:
        return data
    at = rng.randrange(len(data))
    return data[:at] + data[at + rng.randint(1, 64):]


def _duplicate(data: bytearray, rng: random.Random) -> bytearray:
    if not data:
        return data
    at = rng.randrange(len(data))
    chunk = data[at:at + rng.randint(1, 256)]
    to = rng.randrange(len(data) + 1)
    return data[:to] + chunk + data[to:]


_BYTE_MUTATIONS: tuple[Callable[[bytearray, random.Random], bytearray], ...] = (
    _flip_bits, _set_bytes, _set_integer, _truncate, _insert, _delete, _duplicate)


def mutate_structure(value: Any, rng: random.Random) -> Any:
    """A deep copy of a parsed JSON/YAML value with 1-3 structural changes at random places."""
    value = copy.deepcopy(value)
    for _ in range(rng.randint(1, 3)):
        value = _mutate_at_random_place(value, rng)
    return value


def _mutate_at_random_place(value: Any, rng: random.Random) -> Any:
    containers = list(_containers(value))
    if not containers or rng.random() < 0.05:
        return _replacement(value, rng)
    container, key = rng.choice(containers)
    action = rng.random()
    if action < 0.15 and isinstance(container, dict):
        del container[key]
    elif action < 0.25 and isinstance(container, dict):
        container[rng.choice(["", "spk", "model", "data", "train", "\x00", "ä" * 3])] = _replacement(None, rng)
    else:
        container[key] = _replacement(container[key], rng)
    return value


def _containers(value: Any, depth: int = 0) -> Iterator[tuple[Any, Any]]:
    """Every (container, key) down to MAX_WALK_DEPTH: a value deep-nested by an earlier mutation of the same
    case is not walked to its bottom (the walk would exceed Python's recursion limit)."""
    if depth >= MAX_WALK_DEPTH:
        return
    if isinstance(value, dict):
        for key, item in value.items():
            yield value, key
            yield from _containers(item, depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield value, index
            yield from _containers(item, depth + 1)


def _replacement(old: Any, rng: random.Random) -> Any:
    choice = rng.random()
    if choice < 0.05:
        deep: Any = old
        for _ in range(rng.choice((50, 1000, 100_000))):
            deep = [deep]
        return deep
    if choice < 0.15 and isinstance(old, (int, float)) and not isinstance(old, bool):
        return old * rng.choice((-1, 0, 1000, 10 ** 12)) + rng.choice((0, 1, -1))
    if choice < 0.2 and isinstance(old, str):
        return old * rng.choice((0, 2, 1000))
    return copy.deepcopy(rng.choice(INTERESTING_VALUES))


def _dump_structure(value: Any, yaml_text: bool) -> bytes:
    if yaml_text:
        import yaml

        try:
            return yaml.safe_dump(value, allow_unicode=True).encode("utf-8")
        except RecursionError:
            return b"[" * 100_000
    try:
        return json.dumps(value, ensure_ascii=False).encode("utf-8")
    except RecursionError:
        return b"[" * 100_000 + b"]" * 100_000


def generate_cases(seeds: Sequence[bytes], cases: int, seed: int, mutator: str = "bytes",
                   yaml_text: bool = False) -> Iterator[bytes]:
    """`cases` mutated inputs, the same for the same arguments. With mutator="json", half the cases are
    structural mutations of the parsed seeds, the other half byte mutations."""
    rng = random.Random(seed)
    parsed = [_parse(data, yaml_text) for data in seeds] if mutator == "json" else []
    for _ in range(cases):
        index = rng.randrange(len(seeds))
        if parsed and parsed[index] is not None and rng.random() < 0.5:
            yield _dump_structure(mutate_structure(parsed[index], rng), yaml_text)
        else:
            yield mutate_bytes(seeds[index], rng)


def _parse(data: bytes, yaml_text: bool) -> Any:
    if yaml_text:
        import yaml

        return yaml.safe_load(data.decode("utf-8"))
    return json.loads(data.decode("utf-8"))


# ---------------------------------------------------------------- parent side

def fuzz_reader(reader: str, seeds: Sequence[str | os.PathLike], *, cases: int, seed: int, suffix: str | None = None,
                mutator: str = "bytes", memory_mb: int = 1024, case_seconds: float = 20.0,
                timeout: float = 300.0, keep_dir: str | os.PathLike | None = None) -> FuzzReport:
    """Fuzz `reader` ("module:function", called with one path) in a child process; see the module's text.

    `suffix` is the mutated file's extension (default: the first seed's, e.g. ".wav.f0.npy" is kept whole);
    `keep_dir` is where the input of a crash is kept (default: a new temporary folder)."""
    seeds = [Path(s) for s in seeds]
    suffix = suffix if suffix is not None else "".join(seeds[0].suffixes) or seeds[0].suffix
    work = Path(tempfile.mkdtemp(prefix="fuzz_", dir=keep_dir))
    result_file, progress_file = work / "result.json", work / "progress"
    command = [sys.executable, "-m", "tests.fuzz", reader, *map(str, seeds), "--cases", str(cases),
               "--seed", str(seed), "--suffix", suffix, "--mutator", mutator, "--memory_mb", str(memory_mb),
               "--case_seconds", str(case_seconds), "--work", str(work)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    try:
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return FuzzReport(cases, [f"case {_read_progress(progress_file)}: the run took over {timeout:g} s"],
                          work / "case.input")
    if done.returncode < 0:
        case = _read_progress(progress_file)
        return FuzzReport(cases, [f"case {case}: killed by signal {-done.returncode}"], work / "case.input")
    if done.returncode != 0 or not result_file.exists():
        return FuzzReport(cases, [f"the fuzz child failed (exit {done.returncode}): {done.stderr[-2000:]}"])
    report = json.loads(result_file.read_text(encoding="utf-8"))
    return FuzzReport(report["cases"], report["failures"])


def _read_progress(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip() or "?"
    except OSError:
        return "?"


# ---------------------------------------------------------------- child side

class _CaseTimeout(BaseException):
    """Raised by the alarm inside a case that ran too long (a BaseException: readers must not swallow it)."""


def _cap_memory(extra_mb: int) -> None:
    import resource

    with open("/proc/self/status", encoding="ascii") as f:
        size_kb = next(int(line.split()[1]) for line in f if line.startswith("VmSize:"))
    limit = (size_kb * 1024) + extra_mb * 2 ** 20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _resolve(reader: str) -> Callable[[str], Any]:
    import importlib

    module, _, name = reader.partition(":")
    function: Any = importlib.import_module(module)
    for part in name.split("."):
        function = getattr(function, part)
    return function


def _run_child(args: argparse.Namespace) -> None:
    import signal

    import torch
    from loguru import logger

    from core.errors import SvcError

    torch.set_num_threads(1)
    logger.remove()
    reader = _resolve(args.reader)
    work = Path(args.work)
    case_path = work / f"case{args.suffix}"
    seeds = [Path(s).read_bytes() for s in args.seeds]
    yaml_text = args.suffix.endswith((".yaml", ".yml"))

    def on_alarm(signum: int, frame: Any) -> None:
        raise _CaseTimeout()

    signal.signal(signal.SIGALRM, on_alarm)
    _cap_memory(args.memory_mb)
    failures: list[str] = []
    for number, data in enumerate(generate_cases(seeds, args.cases, args.seed, args.mutator, yaml_text)):
        case_path.write_bytes(data)
        (work / "progress").write_text(str(number), encoding="utf-8")
        (work / "case.input").write_bytes(data)
        signal.setitimer(signal.ITIMER_REAL, args.case_seconds)
        try:
            reader(str(case_path))
        except SvcError as error:
            if "\n" in str(error).strip() or not str(error).strip():
                failures.append(f"case {number}: {type(error).__name__} message is not one line: {str(error)!r:.300}")
        except _CaseTimeout:
            failures.append(f"case {number}: ran over {args.case_seconds:g} s")
        except BaseException as error:  # noqa: BLE001 - every other exception is what the fuzzer looks for
            if isinstance(error, KeyboardInterrupt):
                raise
            failures.append(f"case {number}: {type(error).__name__}: {str(error)[:300]}")
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    (work / "case.input").unlink(missing_ok=True)
    (work / "result.json").write_text(json.dumps({"cases": args.cases, "failures": failures}), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description="Fuzz one reader of user-supplied files in this process.")
    parser.add_argument("reader", help="module:function, called with the path of each mutated file")
    parser.add_argument("seeds", nargs="+", help="valid files to mutate")
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--suffix", default=None, help="the mutated file's extension (default: the first seed's)")
    parser.add_argument("--mutator", choices=("bytes", "json"), default="bytes")
    parser.add_argument("--memory_mb", type=int, default=1024)
    parser.add_argument("--case_seconds", type=float, default=20.0)
    parser.add_argument("--work", default=None, help="folder for the case file and the result (default: a new one)")
    args = parser.parse_args()
    if args.suffix is None:
        args.suffix = "".join(Path(args.seeds[0]).suffixes)
    if args.work is None:
        args.work = tempfile.mkdtemp(prefix="fuzz_")
        print(f"working in {args.work}")
    _run_child(args)
    print((Path(args.work) / "result.json").read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
