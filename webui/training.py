"""The Train tab: what a model folder's training has reached, and preprocessing / training run as subprocesses.

The status is read from the files train.py writes (G_/D_<step>.pth, TensorBoard events); the jobs are the
scripts themselves (resample.py, preprocess_flist_config.py, preprocess_hubert_f0.py, train.py) started
with this interpreter, one job per kind at a time, their output collected in a log whose tail the page shows.
"""
from __future__ import annotations

import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from core.checkpoint import latest_checkpoint
from core.errors import SvcError

REPO = Path(__file__).resolve().parent.parent
LOSS_PREFIX = "loss/"
JOB_KINDS = ("preprocess", "train")
TAIL_LINES = 40


@dataclass
class TrainingStatus:
    folder: Path
    step: int | None                       # of the newest G_<step>.pth
    checkpoint: Path | None
    diffusion_step: int | None
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)   # tag -> (step, value)

    def summary(self) -> str:
        if self.checkpoint is None:
            lines = [f"{self.folder.name}: no G_<step>.pth yet"]
        else:
            lines = [f"{self.folder.name}: latest checkpoint {self.checkpoint.name} (step {self.step})"]
        if self.diffusion_step is not None:
            lines.append(f"diffusion model: step {self.diffusion_step}")
        for tag, points in sorted(self.curves.items()):
            lines.append(f"{tag}: {points[-1][1]:.4g} at step {points[-1][0]} ({len(points)} points)")
        if not self.curves:
            lines.append("no TensorBoard loss scalars found in this folder yet")
        return "\n".join(lines)


def read_curves(folder: Path, prefix: str = LOSS_PREFIX) -> dict[str, list[tuple[int, float]]]:
    """Scalars whose tag starts with `prefix` from the TensorBoard event files directly in `folder`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not any(Path(folder).glob("events.out.tfevents.*")):
        return {}
    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    try:
        accumulator.Reload()
    except Exception as error:  # a truncated event file while training writes it: show what could be read
        raise SvcError(f"cannot read the TensorBoard events in {folder}: {error}") from None
    tags = [tag for tag in accumulator.Tags().get("scalars", []) if tag.startswith(prefix)]
    return {tag: [(event.step, float(event.value)) for event in accumulator.Scalars(tag)] for tag in tags}


def training_status(folder: Path) -> TrainingStatus:
    newest = latest_checkpoint(folder, "G")
    diffusion = latest_checkpoint(Path(folder) / "diffusion", "diffusion")
    return TrainingStatus(Path(folder), newest[0] if newest else None, newest[1] if newest else None,
                          diffusion[0] if diffusion else None, read_curves(folder))


def curve_rows(status: TrainingStatus) -> list[dict]:
    """The curves as rows (step, value, curve) for a line plot."""
    return [{"step": step, "value": value, "curve": tag[len(LOSS_PREFIX):]}
            for tag, points in sorted(status.curves.items()) for step, value in points]


def script(name: str, *args: str | Path) -> list[str]:
    """A top-level script run with this interpreter (the project's venv when started from it)."""
    return [sys.executable, str(REPO / name), *map(str, args)]


def preprocess_commands(raw_dir: Path, dataset_dir: Path, config_dir: Path, pretrain_dir: Path,
                        speech_encoder: str, f0_predictor: str) -> list[list[str]]:
    """4.1's preprocessing, in order: resample, filelists and config, then features."""
    return [script("resample.py", "--in_dir", raw_dir, "--out_dir2", dataset_dir),
            script("preprocess_flist_config.py", "--source_dir", dataset_dir, "--speech_encoder", speech_encoder,
                   "--config_dir", config_dir),
            script("preprocess_hubert_f0.py", "--in_dir", dataset_dir, "-c", Path(config_dir) / "config.json",
                   "--f0_predictor", f0_predictor, "--pretrain_dir", pretrain_dir)]


def train_command(logs_dir: Path, name: str, new_config: Path, extra: tuple[str, ...] = ()) -> list[str]:
    """train.py for `logs_dir/name`: resumes with the folder's own config when it has one, else starts
    from `new_config` (the one preprocess_flist_config.py wrote)."""
    folder = Path(logs_dir) / name
    config = folder / "config.json" if (folder / "config.json").is_file() else Path(new_config)
    if not config.is_file():
        raise SvcError(f"no config to train with: neither {folder / 'config.json'} nor {new_config} exists "
                       "(run the preprocessing first)")
    return script("train.py", "-c", config, "-m", name, "--logs_dir", logs_dir, *extra)


class Job:
    """Commands run one after another in a subprocess each, output appended to `log`; stoppable."""

    def __init__(self, commands: list[list[str]], log: Path, cwd: Path):
        self.commands, self.log, self.cwd = commands, Path(log), Path(cwd)
        self.process: subprocess.Popen | None = None
        self.returncode: int | None = None
        self.stopped = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.log.write_text("", encoding="utf-8")
        self._thread.start()

    def _run(self) -> None:
        with self.log.open("a", encoding="utf-8") as out:
            for command in self.commands:
                with self._lock:  # so that stop() never falls between the check and the start
                    if self.stopped:
                        break
                    out.write(f"$ python {' '.join(command[1:])}\n")
                    out.flush()
                    self.process = subprocess.Popen(command, cwd=self.cwd, stdout=out, stderr=subprocess.STDOUT,
                                                    stdin=subprocess.DEVNULL, env=_unbuffered_env())
                self.returncode = self.process.wait()
                if self.returncode != 0:
                    break
            out.write("stopped\n" if self.stopped else f"finished (exit code {self.returncode})\n")

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self, grace: float = 30.0) -> None:
        """Terminate the running command and start no further one; kill it if it outlives `grace` seconds."""
        with self._lock:
            self.stopped = True
            process = self.process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()

    def wait(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def tail(self, lines: int = TAIL_LINES) -> str:
        if not self.log.is_file():
            return ""
        text = self.log.read_text(encoding="utf-8", errors="replace").replace("\r", "\n")
        return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])


def _unbuffered_env() -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}


class Jobs:
    """At most one running job per kind (preprocess, train)."""

    def __init__(self, cwd: Path):
        self.cwd = Path(cwd)
        self.jobs: dict[str, Job] = {}

    def start(self, kind: str, commands: list[list[str]], log: Path) -> Job:
        if kind not in JOB_KINDS:
            raise SvcError(f"unknown job kind {kind!r}")
        current = self.jobs.get(kind)
        if current is not None and current.running:
            raise SvcError(f"a {kind} job is running already; stop it first")
        job = Job(commands, log, self.cwd)
        job.start()
        self.jobs[kind] = job
        return job

    def stop(self, kind: str) -> str:
        job = self.jobs.get(kind)
        if job is None or not job.running:
            return f"no {kind} job is running"
        job.stop()
        job.wait(30)
        return f"{kind} job stopped"

    def tail(self, kind: str) -> str:
        job = self.jobs.get(kind)
        if job is None:
            return f"no {kind} job started from this page yet"
        state = "running" if job.running else "not running"
        return f"[{kind}: {state}; log {job.log}]\n{job.tail()}"
