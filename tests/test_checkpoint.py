"""Checkpoints: 4.1's keys, strict round trip, 4.1-format dicts and base models resume, shape reports,
latest/keep_ckpts by the step in the file name, safe loading."""
from __future__ import annotations

import pickle

import pytest
import torch

from core.checkpoint import (checkpoint_step, latest_pair, load_weights, prune_checkpoints, read_checkpoint,
                                save_checkpoint)
from core.errors import SvcError, UnsafeFileError
from training.loop import build_generator, build_state, restore, save
from tests.test_train import tiny_config
from tests.conftest import captured_logs


@pytest.fixture
def hps(tmp_path):
    return tiny_config(tmp_path / "data")


@pytest.fixture
def captured():
    with captured_logs("WARNING") as lines:
        yield lines


def _state(hps, seed):
    torch.manual_seed(seed)
    return build_state(hps, torch.device("cpu"), build_generator)


def test_save_has_41_keys_and_loads_strictly(tmp_path, hps):
    state = _state(hps, 0)
    state.epoch, state.epoch_step = 3, 1
    save(state, hps, tmp_path, 12)
    g = read_checkpoint(tmp_path / "G_12.pth")
    assert {"model", "iteration", "optimizer", "learning_rate"} <= set(g)
    assert g["iteration"] == 3 and g["learning_rate"] == hps.train.learning_rate
    assert g["global_step"] == 12 and not any(k.startswith("module.") for k in g["model"])

    fresh = _state(hps, 1)
    restore(fresh, tmp_path)
    assert (fresh.epoch, fresh.step, fresh.epoch_step) == (3, 13, 1)
    for net_a, net_b in ((state.net_g, fresh.net_g), (state.net_d, fresh.net_d)):
        for (key, a), b in zip(net_a.state_dict().items(), net_b.state_dict().values()):
            assert torch.equal(a, b), key


def test_41_format_checkpoint_resumes_at_next_step(tmp_path, hps):
    state = _state(hps, 0)
    for kind, net, optim in (("G", state.net_g, state.optim_g), ("D", state.net_d, state.optim_d)):
        torch.save({"model": net.state_dict(), "iteration": 7, "optimizer": optim.state_dict(),
                    "learning_rate": 1e-4}, tmp_path / f"{kind}_800.pth")
    fresh = _state(hps, 1)
    restore(fresh, tmp_path)
    assert (fresh.epoch, fresh.step, fresh.epoch_step) == (7, 801, 0)
    torch.testing.assert_close(fresh.net_g.state_dict(), state.net_g.state_dict())


def test_base_model_with_other_speaker_count_reports_shapes(tmp_path, hps, captured):
    other = tiny_config(tmp_path / "data")
    other.model.n_speakers = 5
    base = _state(other, 0)
    save_checkpoint(tmp_path / "G_0.pth", base.net_g, None, epoch=0, learning_rate=1e-4)
    save_checkpoint(tmp_path / "D_0.pth", base.net_d, None, epoch=0, learning_rate=1e-4)
    state = _state(hps, 1)
    emb_before = state.net_g.emb_g.weight.detach().clone()
    restore(state, tmp_path)
    assert state.step == 1 and state.epoch == 1
    assert any("emb_g.weight has shape (5, 16) in the file but (2, 16) in the model" in line for line in captured)
    assert torch.equal(state.net_g.emb_g.weight, emb_before)  # kept its initial value
    torch.testing.assert_close(state.net_g.pre.weight, base.net_g.pre.weight)


def test_strict_load_names_problems(hps):
    model = _state(hps, 0).net_g
    weights = dict(model.state_dict())
    weights.pop("pre.bias")
    weights["emb_g.weight"] = torch.zeros(9, 16)
    with pytest.raises(SvcError, match=r"1 missing key\(s\) \(pre.bias\).*emb_g.weight file \(9, 16\) vs model \(2, 16\)"):
        load_weights(model, weights, strict=True)
    compressed = {k: v for k, v in model.state_dict().items() if not k.startswith("enc_q.")}
    assert load_weights(model, compressed, strict=True, allow_missing=("enc_q.",)).complete


def test_step_comes_from_the_file_name_only(tmp_path):
    run = tmp_path / "run99"
    run.mkdir()
    for step in (0, 9, 10, 12):
        (run / f"G_{step}.pth").write_bytes(b"x")
    for step in (0, 9, 10):
        (run / f"D_{step}.pth").write_bytes(b"x")
    assert checkpoint_step(run / "G_10.pth") == 10 and checkpoint_step(run / "G_10.pth.tmp") is None
    assert latest_pair(run) == (10, run / "G_10.pth", run / "D_10.pth")  # G_12 has no D: not a pair
    removed = prune_checkpoints(run, keep=1)  # keeps the newest complete pair, G_0/D_0 and the newer G_12
    assert sorted(p.name for p in run.iterdir()) == ["D_0.pth", "D_10.pth", "G_0.pth", "G_10.pth", "G_12.pth"]
    assert sorted(p.name for p in removed) == ["D_9.pth", "G_9.pth"]
    assert prune_checkpoints(run, keep=0) == []


class _Payload:
    def __reduce__(self):
        return (print, ("code ran",))


def test_unsafe_checkpoint_is_refused(tmp_path):
    path = tmp_path / "G_5.pth"
    with open(path, "wb") as f:
        pickle.dump({"model": _Payload()}, f, protocol=2)
    with pytest.raises(UnsafeFileError):
        read_checkpoint(path)
    torch.save({"iteration": 1}, tmp_path / "G_6.pth")
    with pytest.raises(SvcError, match="not a So-VITS checkpoint"):
        read_checkpoint(tmp_path / "G_6.pth")


def test_githash_is_recorded_once(tmp_path):
    import subprocess

    from conftest import REPO
    from training.loop import record_githash

    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    if not head:
        pytest.skip("not a git checkout")
    record_githash(tmp_path / "githash")
    assert (tmp_path / "githash").read_text().strip() == head
    (tmp_path / "githash").write_text("0" * 40)
    record_githash(tmp_path / "githash")  # an earlier run's commit is kept (and a warning logged)
    assert (tmp_path / "githash").read_text() == "0" * 40


def test_one_load_report_for_generator_and_diffusion_files(tmp_path, hps):
    from diffusion.unit2mel import Unit2Mel, Unit2MelDims
    from models import LoadReport as ModelsLoadReport, load_generator_weights

    from core.checkpoint import LoadReport, load_diffusion_checkpoint, read_state_dict, save_diffusion_checkpoint

    assert ModelsLoadReport is LoadReport
    generator = _state(hps, 0).net_g
    save_checkpoint(tmp_path / "G_3.pth", generator, None, epoch=1, learning_rate=1e-4)
    g_report = load_generator_weights(_state(hps, 1).net_g, read_state_dict(tmp_path / "G_3.pth"))

    def unit2mel(n_spk):
        return Unit2Mel(Unit2MelDims(input_channel=8, n_spk=n_spk, n_layers=2, n_chans=16, n_hidden=16,
                                     timesteps=100))

    save_diffusion_checkpoint(tmp_path / "model_3.pt", unit2mel(2), 3)
    target = unit2mel(4)
    assert load_diffusion_checkpoint(tmp_path / "model_3.pt", target) == 3
    d_report = load_weights(target, read_checkpoint(tmp_path / "model_3.pt", kind="diffusion")["model"],
                            strict=False, warn=False)
    assert type(g_report) is type(d_report) is LoadReport
    assert g_report.complete and not d_report.complete and not d_report.fits
    assert d_report.mismatched == [("spk_embed.weight", (2, 16), (4, 16))]
    assert d_report.problems() == ["spk_embed.weight: checkpoint (2, 16) vs model (4, 16)"]
    torch.save({"global_step": 4}, tmp_path / "model_4.pt")
    with pytest.raises(SvcError, match="not a diffusion checkpoint"):
        load_diffusion_checkpoint(tmp_path / "model_4.pt", target)


def test_latest_and_prune_for_both_kinds(tmp_path):
    from core.checkpoint import (latest_checkpoint, latest_diffusion_checkpoint, list_checkpoints,
                                 prune_diffusion_checkpoints)

    for name in ("G_0.pth", "G_10.pth", "G_20.pth", "D_10.pth", "D_20.pth", "model_0.pt", "model_30.pt",
                 "model_60.pt", "model_90.pt", "notes_120.pt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "model_150.pt").write_bytes(b"x")
    assert checkpoint_step(tmp_path / "model_90.pt") == 90 and checkpoint_step(tmp_path / "notes_120.pt") is None
    assert latest_checkpoint(tmp_path, "G") == (20, tmp_path / "G_20.pth")
    assert latest_checkpoint(tmp_path, "diffusion") == (90, tmp_path / "model_90.pt")
    assert latest_diffusion_checkpoint(tmp_path) == (tmp_path / "old" / "model_150.pt", 150)  # searched deeply
    assert sorted(list_checkpoints(tmp_path, "D")) == [10, 20]

    assert [p.name for p in prune_checkpoints(tmp_path, keep=1)] == ["G_10.pth", "D_10.pth"]
    assert prune_diffusion_checkpoints(tmp_path, 90, interval=30, force_interval=60) == []  # 60 is forced
    assert prune_diffusion_checkpoints(tmp_path, 30, interval=30) == []  # model_0 is never pruned
    assert prune_diffusion_checkpoints(tmp_path, 60, interval=30) == [tmp_path / "model_30.pt"]
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["model_0.pt", "model_60.pt", "model_90.pt",
                                                             "notes_120.pt"]
