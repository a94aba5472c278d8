"""Training hardening: --max_steps stops exactly there (fresh and resumed, a run already there trains nothing),
temp files of killed checkpoint saves are removed at start (and nothing else), and both trainers show a step
counter with rate and ETA (a tqdm bar on a terminal, log lines otherwise; rank 0 only)."""
from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import tempfile
import termios
from pathlib import Path

import pytest
import torch

from diffusion.trainer import train as train_diffusion
from core.checkpoint import DIFFUSION_CHECKPOINT_NAME, remove_stale_temp_files
from core.config import save_config
from training.loop import RunOptions, _log_file, train
from tests import test_diffusion_train as diffusion_helpers
from tests.conftest import REPO, captured_logs
from tests.test_train import STEP_LINE, _free_port, _train_cmd, logged_steps, tiny_config, write_config

PROGRESS_LINE = re.compile(r"progress: (\d+)/(\d+) steps \(([\d.]+)%\), [\d.e+-]+ steps/s, ETA (\d\d:\d\d|\?)")


@pytest.fixture
def messages():
    with captured_logs("INFO") as lines:
        yield lines


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **extra}


def _checkpoints(folder: Path, pattern: str) -> dict[str, int]:
    """{name: mtime_ns} of the checkpoint files in `folder`."""
    return {p.name: p.stat().st_mtime_ns for p in folder.glob(pattern)}


def _plant_leftovers(folder: Path) -> None:
    """What a kill during a save leaves (0-byte temp files) and look-alikes that are not ours to delete."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in (".G_40.pth.abc123.tmp", ".D_40.pth.k3j_x9a1.tmp", ".model_30.pt.xyz.tmp", ".notes.tmp", "keep.tmp"):
        (folder / name).touch()


# --------------------------------------------------------------------------------------------------------------
# temp files of interrupted saves


def test_remove_stale_temp_files_takes_only_checkpoint_temps(tmp_path, messages):
    _plant_leftovers(tmp_path)
    fd, real_temp = tempfile.mkstemp(dir=tmp_path, prefix=".G_7.pth.", suffix=".tmp")  # atomic_path's naming
    os.close(fd)
    for name in (".G_7.pth.tmp", ".G_x.pth.abc.tmp", ".G_7.pth.abc.tmp.bak", "G_7.pth.abc.tmp", ".G_7.pth.a-b.tmp"):
        (tmp_path / name).touch()
    (tmp_path / ".G_8.pth.dir.tmp").mkdir()
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / ".G_9.pth.abc.tmp").touch()
    before = {p.name for p in tmp_path.iterdir()}

    removed = remove_stale_temp_files(tmp_path)

    expected = {".G_40.pth.abc123.tmp", ".D_40.pth.k3j_x9a1.tmp", Path(real_temp).name}
    assert {p.name for p in removed} == expected
    assert {p.name for p in tmp_path.iterdir()} == before - expected
    assert (tmp_path / "eval" / ".G_9.pth.abc.tmp").exists()
    assert len(messages) == 1 and "removed 3 temp file(s)" in messages[0] and ".G_40.pth.abc123.tmp" in messages[0]

    assert [p.name for p in remove_stale_temp_files(tmp_path, DIFFUSION_CHECKPOINT_NAME)] == [".model_30.pt.xyz.tmp"]
    assert remove_stale_temp_files(tmp_path) == [] and len(messages) == 2  # nothing left: no log line
    assert remove_stale_temp_files(tmp_path / "absent") == []


def test_train_removes_its_stale_temp_files_at_start(tmp_path, one_thread, messages):
    hps = tiny_config(tmp_path / "data", eval_interval=1000, all_in_mem=True)
    model_dir = tmp_path / "run"
    _plant_leftovers(model_dir)
    assert train(hps, RunOptions(model_dir=model_dir, num_workers=0, max_steps=0)) == 0
    names = {p.name for p in model_dir.iterdir()}
    assert not {".G_40.pth.abc123.tmp", ".D_40.pth.k3j_x9a1.tmp"} & names
    assert {".model_30.pt.xyz.tmp", ".notes.tmp", "keep.tmp", "G_0.pth", "D_0.pth"} <= names
    assert sum("removed 2 temp file(s)" in m for m in messages) == 1


def test_train_diff_removes_its_stale_temp_files_at_start(tmp_path, messages):
    config = diffusion_helpers.tiny_config(tmp_path, diffusion_helpers.make_dataset(tmp_path))
    expdir = Path(config.env.expdir)
    _plant_leftovers(expdir)
    assert train_diffusion(config, max_steps=2) == 2
    names = {p.name for p in expdir.iterdir()}
    assert ".model_30.pt.xyz.tmp" not in names
    assert {".G_40.pth.abc123.tmp", ".D_40.pth.k3j_x9a1.tmp", ".notes.tmp", "keep.tmp", "model_2.pt"} <= names
    assert sum("removed 1 temp file(s)" in m and ".model_30.pt.xyz.tmp" in m for m in messages) == 1


# --------------------------------------------------------------------------------------------------------------
# --max_steps


@pytest.mark.slow
def test_train_max_steps_fresh_resumed_and_already_there(tmp_path, one_thread):
    hps = tiny_config(tmp_path / "data", eval_interval=1000)
    config = write_config(hps, tmp_path / "config.json")
    model_dir = tmp_path / "logs" / "run"
    model_dir.mkdir(parents=True)
    with _log_file(model_dir):
        assert train(hps, RunOptions(model_dir=model_dir, num_workers=0, max_steps=2)) == 0
    assert sorted(logged_steps((model_dir / "train.log").read_text())) == [0, 1, 2]
    saved = _checkpoints(model_dir, "[GD]_*.pth")
    assert set(saved) == {"G_0.pth", "D_0.pth", "G_2.pth", "D_2.pth", "G_best.pth"}  # best: step 0's evaluation

    again = subprocess.run(_train_cmd(config, tmp_path / "logs", "--max_steps", "2"), env=_env(),
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "already at step 2 (--max_steps 2); nothing to train" in again.stderr
    assert _checkpoints(model_dir, "[GD]_*.pth") == saved
    assert sorted(logged_steps((model_dir / "train.log").read_text())) == [0, 1, 2]
    assert "Traceback" not in again.stderr

    further = subprocess.run(_train_cmd(config, tmp_path / "logs", "--max_steps", "4"),
                             env=_env(SVC_PROGRESS_INTERVAL="0"), capture_output=True, text=True, timeout=300)
    assert further.returncode == 0, further.stderr
    assert sorted(logged_steps((model_dir / "train.log").read_text())) == [0, 1, 2, 3, 4]
    assert set(_checkpoints(model_dir, "[GD]_*.pth")) == set(saved) | {"G_4.pth", "D_4.pth"}
    progress = [m.groups() for m in PROGRESS_LINE.finditer(further.stderr)]
    assert [(done, total) for done, total, _, _ in progress] == [("4", "5"), ("5", "5")], further.stderr
    assert progress[0][3] != "?" and progress[1][3] == "00:00"


def test_train_max_steps_flag_refuses_negative(tmp_path):
    result = subprocess.run(_train_cmd(tmp_path / "config.json", tmp_path, "--max_steps", "-1"), env=_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--max_steps must not be negative" in result.stderr


def test_diffusion_max_steps_saves_there_and_resumed_run_trains_nothing(tmp_path, messages):
    config = diffusion_helpers.tiny_config(tmp_path, diffusion_helpers.make_dataset(tmp_path))  # interval_val 30
    expdir = Path(config.env.expdir)
    steps: list[int] = []
    assert train_diffusion(config, max_steps=4, on_step=lambda step, loss: steps.append(step)) == 4
    assert steps == [1, 2, 3, 4]
    assert torch.load(expdir / "model_4.pt", weights_only=True)["global_step"] == 4
    saved = _checkpoints(expdir, "model_*.pt")

    steps.clear()
    assert train_diffusion(config, max_steps=4, on_step=lambda step, loss: steps.append(step)) == 4
    assert steps == [] and _checkpoints(expdir, "model_*.pt") == saved
    assert any("already at step 4 (--max_steps 4); nothing to train" in m for m in messages)

    assert train_diffusion(config, max_steps=6, on_step=lambda step, loss: steps.append(step)) == 6
    assert steps == [5, 6]
    assert set(_checkpoints(expdir, "model_*.pt")) == {"model_4.pt", "model_6.pt"}


@pytest.mark.slow
def test_train_diff_cli_max_steps_fresh_and_resumed(tmp_path):
    config = diffusion_helpers.tiny_config(tmp_path, diffusion_helpers.make_dataset(tmp_path))
    save_config(config, tmp_path / "diffusion.yaml")
    expdir = Path(config.env.expdir)

    def run(max_steps: int) -> subprocess.CompletedProcess:
        command = [sys.executable, str(REPO / "train_diff.py"), "-c", str(tmp_path / "diffusion.yaml"),
                   "--max_steps", str(max_steps)]
        result = subprocess.run(command, cwd=tmp_path, env=_env(SVC_PROGRESS_INTERVAL="0"), capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        return result

    fresh = run(3)
    assert "training finished at step 3" in fresh.stderr
    assert set(_checkpoints(expdir, "model_*.pt")) == {"model_3.pt"}
    progress = [m.groups()[:2] for m in PROGRESS_LINE.finditer(fresh.stderr)]
    assert progress == [("1", "3"), ("2", "3"), ("3", "3")], fresh.stderr
    saved = _checkpoints(expdir, "model_*.pt")

    again = run(3)
    assert "already at step 3 (--max_steps 3); nothing to train" in again.stderr
    assert _checkpoints(expdir, "model_*.pt") == saved and not PROGRESS_LINE.search(again.stderr)

    further = run(5)
    assert set(_checkpoints(expdir, "model_*.pt")) == {"model_3.pt", "model_5.pt"}
    assert torch.load(expdir / "model_5.pt", weights_only=True)["global_step"] == 5
    assert [m.groups()[:2] for m in PROGRESS_LINE.finditer(further.stderr)] == [("4", "5"), ("5", "5")]


# --------------------------------------------------------------------------------------------------------------
# progress display


def test_train_logs_progress_without_max_steps_towards_the_epochs(tmp_path, one_thread, messages, monkeypatch):
    """No --max_steps: the total is the steps to the end of train.epochs (2 epochs × 2 batches)."""
    monkeypatch.setenv("SVC_PROGRESS_INTERVAL", "0")
    hps = tiny_config(tmp_path / "data", eval_interval=1000, all_in_mem=True, epochs=2)
    assert train(hps, RunOptions(model_dir=tmp_path / "run", num_workers=0)) == 0
    progress = [m.groups()[:2] for m in map(PROGRESS_LINE.search, messages) if m]
    assert progress == [("1", "4"), ("2", "4"), ("3", "4"), ("4", "4")], messages
    assert not any(STEP_LINE.search(m) for m in messages if m.startswith("progress:"))  # log parsers unaffected


def _run_on_terminal(code: str) -> str:
    """Run `python -c code` with stderr on a pseudo-terminal 120 columns wide; returns what it printed there."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    process = subprocess.Popen([sys.executable, "-c", code], stderr=slave, stdout=subprocess.DEVNULL, env=_env())
    os.close(slave)
    output = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    os.close(master)
    assert process.wait(timeout=60) == 0, output.decode(errors="replace")
    return output.decode(errors="replace")


def test_terminal_shows_a_bar_and_log_lines_print_above_it():
    output = _run_on_terminal(
        "import time\n"
        "from loguru import logger\n"
        "from core.progress import StepProgress, route_logs_through_tqdm\n"
        "route_logs_through_tqdm()\n"
        "with StepProgress(6, 2, desc='training') as progress:\n"
        "    for i in range(4):\n"
        "        time.sleep(0.6)\n"
        "        progress.advance(epoch=1)\n"
        "        if i == 1:\n"
        "            logger.info('a log line')\n")
    assert re.search(r"training: +67%\|.*\| 4/6 \[[\d:]+, ETA [\d:]+, +[\d.]+(step/s|s/step), epoch=1\]", output), output
    assert re.search(r"training: 100%\|.*\| 6/6 \[", output), output
    # the log line starts on a cleared line (tqdm.write), not glued to the end of the bar; loguru may show a zone
    assert re.search(r"\r(\x1b\[\d+m)?\d{4}-\d\d-\d\d [\d:.]+( [+-][\d:]+)?(\x1b\[0m)? \| .*a log line", output), repr(output)
    assert "progress:" not in output  # no log-mode lines on a terminal


def test_disabled_progress_shows_nothing(messages, monkeypatch):
    monkeypatch.setenv("SVC_PROGRESS_INTERVAL", "0")
    from core.progress import StepProgress

    with StepProgress(3, 0, desc="training", enabled=False) as progress:
        for _ in range(3):
            progress.advance()
    assert messages == []
    with StepProgress(3, 0, desc="training") as progress:
        for _ in range(3):
            progress.advance()
    assert len([m for m in messages if PROGRESS_LINE.search(m)]) == 3


@pytest.mark.slow
def test_only_rank_0_shows_progress(tmp_path):
    hps = tiny_config(tmp_path / "data", batch_size=1, eval_interval=1000, port=str(_free_port()))
    config = write_config(hps, tmp_path / "config.json")
    result = subprocess.run(_train_cmd(config, tmp_path / "logs", "--max_steps", "1", "--cpu_processes", "2"),
                            env=_env(SVC_PROGRESS_INTERVAL="0"), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    progress = [m.groups()[:2] for m in PROGRESS_LINE.finditer(result.stderr)]
    assert progress == [("1", "2"), ("2", "2")], result.stderr
