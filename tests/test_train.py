"""Training: a tiny model on generated tones learns; kill -9 + rerun resumes exactly; Ctrl-C saves; NaN stops;
2-process gloo DDP splits the data; the learning-rate schedule equals 4.1's scheduler chain.

Tiny sizes everywhere (generator ~100 k parameters, discriminator narrowed by 16) and one CPU thread per
process: on a shared machine, tiny ops on several threads are dominated by thread hand-offs.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from core.config import HParams, load_template, save_config
from tests.synthetic import write_synthetic_dataset
from training.dataset import BucketSampler
from training.loop import RunOptions, TrainingStopped, _log_file, learning_rate_at, train
from tests.conftest import REPO, run_script

SPEAKERS = ("alice", "bob")


def tiny_config(root: Path, **train_overrides) -> HParams:
    """A config for a ~100 k-parameter generator over a generated dataset in `root` (created if absent)."""
    train_list, val_list = root / "train.txt", root / "val.txt"
    if not train_list.exists():
        paths = write_synthetic_dataset(root / "dataset", SPEAKERS, items_per_speaker=2, seconds=1.0, ssl_dim=16)
        train_list.write_text("\n".join(paths) + "\n")
        val_list.write_text(paths[0] + "\n")
    hps = load_template("config_tiny_template.json")
    hps.train.update({**dict(batch_size=2, log_interval=1, eval_interval=2, segment_size=2560, keep_ckpts=2,
                             epochs=1000, learning_rate=2e-4), **train_overrides})
    hps.data.update(training_files=str(train_list), validation_files=str(val_list))
    hps.model.update(inter_channels=16, hidden_channels=16, filter_channels=32, n_layers=1,
                     upsample_initial_channel=32, resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3, 5]],
                     n_flow_layer=2, gin_channels=16, ssl_dim=16, n_speakers=2, use_depthwise_conv=False,
                     flow_share_parameter=False, discriminator_width_divisor=16)
    hps.spk = {name: i for i, name in enumerate(SPEAKERS)}
    return hps


def write_config(hps: HParams, path: Path) -> Path:
    save_config(hps, path)
    return path


@pytest.fixture
def single_threaded_env(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


STEP_LINE = re.compile(r"\] step (\d+) (d=.*)$")


def logged_steps(log: str) -> dict[int, str]:
    """{step: the loss part of its log line}; a step logged twice (before a kill and after resume) keeps the last."""
    steps = {}
    for line in log.splitlines():
        match = STEP_LINE.search(line)
        if match:
            steps[int(match[1])] = match[2]
    return steps


def mel_of(line: str) -> float:
    return float(re.search(r"mel=([0-9.e+-]+)", line)[1])


def test_learning_rate_matches_41_scheduler_chain():
    """4.1: ExponentialLR stepped per epoch, warm-up overriding lr = base·epoch/W while epoch ≤ W."""
    for warmup in (0, 3):
        train_cfg = HParams(learning_rate=1e-3, lr_decay=0.9, warmup_epochs=warmup)
        param = torch.nn.Parameter(torch.zeros(1))
        optim = torch.optim.AdamW([param], lr=1e-3)
        scheduler = torch.optim.lr_scheduler.ExponentialLR(optim, gamma=0.9)
        for epoch in range(1, 9):
            if epoch <= warmup:
                for group in optim.param_groups:
                    group["lr"] = 1e-3 / warmup * epoch
            assert learning_rate_at(epoch, train_cfg) == pytest.approx(optim.param_groups[0]["lr"], rel=1e-9)
            optim.step()
            scheduler.step()


def test_bucket_sampler_splits_ranks_and_reshuffles():
    lengths = [10, 50, 20, 40, 30, 60, 70, 15, 25]
    samplers = [BucketSampler(lengths, 2, num_replicas=2, rank=r, seed=3, bucket_batches=2) for r in (0, 1)]
    epoch1 = [s.rank_batches(1) for s in samplers]
    assert len(epoch1[0]) == len(epoch1[1]) == 3  # 5 batches padded to 6
    interleaved = [batch for pair in zip(*epoch1) for batch in pair]  # global batch order r0, r1, r0, ...
    assert sorted(i for batch in interleaved[:5] for i in batch) == list(range(len(lengths)))  # a partition
    assert interleaved[5] == interleaved[0]  # the padding batch repeats the head
    assert all(max(lengths[i] for i in b) - min(lengths[i] for i in b) <= 20 for b in interleaved)  # bucketed
    assert samplers[0].rank_batches(2) != epoch1[0]  # reshuffled every epoch
    samplers[0].set_epoch(1, skip=1)
    assert [[i for i, _ in batch] for batch in samplers[0]] == epoch1[0][1:]
    assert len(samplers[0]) == 2
    assert all(epoch == 1 for batch in samplers[0] for _, epoch in batch)


@pytest.mark.slow
def test_short_training_lowers_mel_loss(tmp_path, one_thread):
    hps = tiny_config(tmp_path / "data", learning_rate=2e-3, eval_interval=1000, all_in_mem=True)
    model_dir = tmp_path / "logs" / "tiny"
    steps = _train_in_process(hps, model_dir, 15)
    assert sorted(steps) == list(range(16))
    first = sum(mel_of(steps[s]) for s in range(3)) / 3
    last = sum(mel_of(steps[s]) for s in range(13, 16)) / 3
    assert last < 0.9 * first, (first, last)
    assert (model_dir / "G_15.pth").exists() and (model_dir / "G_0.pth").exists()


def test_model_without_f0_decoder_trains(tmp_path, one_thread):
    hps = tiny_config(tmp_path / "data", eval_interval=1000, all_in_mem=True)
    hps.model.use_automatic_f0_prediction = False
    steps = _train_in_process(hps, tmp_path / "logs" / "plain", 2)
    assert sorted(steps) == [0, 1, 2]
    assert all(" lf0=0 " in line for line in steps.values()), steps


def test_nan_loss_stops_with_message(tmp_path, one_thread, monkeypatch):
    from modules import losses

    calls = {"n": 0}
    real_mel_loss = losses.mel_loss

    def mel_loss_nan_on_second_step(a, b):
        calls["n"] += 1
        return real_mel_loss(a, b) * (float("nan") if calls["n"] == 2 else 1.0)

    monkeypatch.setattr(losses, "mel_loss", mel_loss_nan_on_second_step)
    hps = tiny_config(tmp_path / "data", eval_interval=1)
    with pytest.raises(TrainingStopped, match=r"NaN or infinite at step 1 .*G_0\.pth"):
        train(hps, RunOptions(model_dir=tmp_path / "run", num_workers=0, max_steps=5))


def _train_cmd(config: Path, logs: Path, *extra: str) -> list[str]:
    return [sys.executable, str(REPO / "train.py"), "-c", str(config), "-m", "run", "--logs_dir", str(logs),
            "--num_workers", "0", *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert process.poll() is None, "training ended before the checkpoint appeared"
        assert time.time() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def _train_in_process(hps: HParams, model_dir: Path, max_steps: int) -> dict[int, str]:
    model_dir.mkdir(parents=True)
    with _log_file(model_dir):
        assert train(hps, RunOptions(model_dir=model_dir, num_workers=0, max_steps=max_steps)) == 0
    return logged_steps((model_dir / "train.log").read_text())


@pytest.mark.slow
def test_kill_9_then_rerun_resumes_exactly(tmp_path, single_threaded_env, one_thread):
    hps = tiny_config(tmp_path / "data")
    config = write_config(hps, tmp_path / "config.json")
    max_steps = "6"
    reference = _train_in_process(hps, tmp_path / "a" / "run", int(max_steps))  # same computation, one thread
    assert sorted(reference) == list(range(7))

    process = subprocess.Popen(_train_cmd(config, tmp_path / "b", "--max_steps", max_steps), env=_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(tmp_path / "b" / "run" / "D_2.pth", process)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert not (tmp_path / "b" / "run" / f"G_{max_steps}.pth").exists()

    result = subprocess.run(_train_cmd(config, tmp_path / "b", "--max_steps", max_steps), env=_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    resumed_at = int(re.search(r"resumed from G_(\d+)\.pth", result.stderr)[1])
    assert resumed_at >= 2
    resumed = logged_steps((tmp_path / "b" / "run" / "train.log").read_text())
    after = [s for s in range(resumed_at + 1, 7)]
    assert after and all(resumed[s] == reference[s] for s in after), (resumed, reference)


@pytest.mark.slow
def test_ctrl_c_saves_and_exits(tmp_path, single_threaded_env):
    config = write_config(tiny_config(tmp_path / "data", eval_interval=1000), tmp_path / "config.json")
    process = subprocess.Popen(_train_cmd(config, tmp_path / "logs"), env=_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    _wait_for(tmp_path / "logs" / "run" / "D_0.pth", process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    step = int(re.search(r"interrupted after step (\d+)", stderr)[1])
    assert step >= 0 and (tmp_path / "logs" / "run" / f"G_{step}.pth").exists()
    assert "Traceback" not in stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_processes_see_different_batches(tmp_path, single_threaded_env):
    hps = tiny_config(tmp_path / "data", batch_size=1, port=str(_free_port()))
    config = write_config(hps, tmp_path / "config.json")
    result = run_script("train.py", "-c", config, "-m", "run", "--logs_dir", tmp_path / "logs", "--num_workers", "0",
                        "--max_steps", "0", "--cpu_processes", "2", check=False, timeout=300)
    assert result.returncode == 0, result.stderr
    firsts = dict(re.findall(r"rank (\d)/2 on cpu: 2 batches per epoch, first batch (\[[0-9, ]+\])", result.stderr))
    assert set(firsts) == {"0", "1"} and firsts["0"] != firsts["1"], result.stderr
    assert (tmp_path / "logs" / "run" / "G_0.pth").exists()
    log = (tmp_path / "logs" / "run" / "train.log").read_text()
    assert sorted(logged_steps(log)) == [0]


def test_resuming_a_4_1_optimizer_state_keeps_the_fused_adamw_kernel():
    from training.loop import load_optimizer_state
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 4)
    saved_by_4_1 = torch.optim.AdamW(net.parameters(), lr=1e-3)  # fused=None, as in 4.1's files
    net(torch.randn(2, 4)).sum().backward()
    saved_by_4_1.step()
    state = saved_by_4_1.state_dict()
    assert state["param_groups"][0]["fused"] is None
    resumed = torch.optim.AdamW(net.parameters(), lr=1e-3, fused=True)
    load_optimizer_state(resumed, state)
    assert resumed.param_groups[0]["fused"] is True and resumed.param_groups[0]["lr"] == 1e-3
    before = net.weight.detach().clone()
    resumed.step()  # the fused kernel takes the restored moments and step counters
    assert resumed.state_dict()["state"][0]["step"].item() == 2 and not torch.equal(net.weight, before)


def test_saved_optimizer_state_names_no_step_kernel_as_in_4_1(tmp_path):
    from core.checkpoint import read_checkpoint, save_checkpoint
    net = torch.nn.Linear(4, 4)
    optimizer = torch.optim.AdamW(net.parameters(), fused=True)
    save_checkpoint(tmp_path / "G_1.pth", net, optimizer, epoch=1, learning_rate=1e-4)
    groups = read_checkpoint(tmp_path / "G_1.pth")["optimizer"]["param_groups"]
    assert [(g["fused"], g["foreach"]) for g in groups] == [(None, None)]
    assert optimizer.param_groups[0]["fused"] is True  # the running optimizer is untouched
