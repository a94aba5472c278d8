"""Behaviour of the So-VITS generator on a small config (shapes, randomness, speaker mix, F0 decoder,
ONNX-mode source, flows, weight loading). Real-size state dicts are checked in test_model_state_dicts.py."""
from __future__ import annotations

import dataclasses
import math
import warnings

import pytest
import torch

from models import (MultiPeriodDiscriminator, SynthesizerConfig, SynthesizerTrn, generator_for_weights,
                    load_generator_weights)
from modules.attentions import (MultiHeadAttention, absolute_to_band, absolute_to_relative, band_to_absolute,
                                relative_to_absolute)
from core.config import load_template
from core.dsp import f0_to_coarse
from core.errors import SvcError
from modules.commons import SkipRandomInit
from modules.f0_decoder import F0NormalizationError, f0_to_lf0, lf0_to_f0, normalize_f0
from core.fileio import safe_torch_load, torch_save
from modules.flows import WN, DepthwiseSeparableConv1d, ResidualCouplingBlock, TransformerCouplingBlock
from vdecoder.hifigan.models import SineGen
from vdecoder.hifiganwithsnake.alias import SnakeAlias, kaiser_sinc_filter

HOP = 512
SMALL = dict(inter_channels=8, hidden_channels=16, filter_channels=32, n_heads=2, n_layers=2, kernel_size=3,
             p_dropout=0.1, resblock="1", resblock_kernel_sizes=[3, 7, 11],
             resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5], [1, 3, 5]], upsample_rates=[8, 8, 2, 2, 2],
             upsample_initial_channel=32, upsample_kernel_sizes=[16, 16, 4, 4, 4], gin_channels=16, ssl_dim=12,
             n_speakers=3, n_layers_q=3, speech_encoder="vec768l12", use_spectral_norm=False)
SPEC_CHANNELS = 33
SEGMENT = 4
SMALL_HPS = {"data": {"filter_length": 2 * (SPEC_CHANNELS - 1), "hop_length": HOP},
             "train": {"segment_size": SEGMENT * HOP}, "model": SMALL}


pytestmark = pytest.mark.usefixtures("one_thread_module")  # tiny models: one torch thread


def small_model(seed: int = 0, **overrides) -> SynthesizerTrn:
    torch.manual_seed(seed)
    model = SynthesizerTrn(SPEC_CHANNELS, SEGMENT, **{**SMALL, **overrides})
    with torch.no_grad():  # fresh flows are the identity (zero `post`); make them do something
        for name, p in model.named_parameters():
            if name.startswith("flow.") and ".post." in name:
                p.normal_(0, 0.1)
    return model.eval()


def inputs(batch: int = 1, frames: int = 12, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    c = torch.randn(batch, SMALL["ssl_dim"], frames, generator=gen)
    f0 = 200 + 40 * torch.rand(batch, frames, generator=gen)
    f0[:, 3:5] = 0
    uv = (f0 > 0).float()
    return c, f0, uv


@pytest.fixture(scope="module")
def model() -> SynthesizerTrn:
    return small_model()


def test_forward_returns_4_1_seven_tuple():
    model = small_model(vol_embedding=True).train()
    c, f0, uv = inputs(batch=2, frames=12)
    f0 = torch.where(f0 > 0, f0, torch.full_like(f0, 210.0))
    spec = torch.rand(2, SPEC_CHANNELS, 12)
    lengths = torch.tensor([12, 9])
    out = model(c, f0, uv, spec, torch.tensor([[0], [2]]), lengths, lengths, vol=torch.rand(2, 12))
    assert len(out) == 7
    audio, starts, spec_mask, latents, pred_lf0, norm_lf0, lf0 = out
    assert audio.shape == (2, 1, SEGMENT * HOP)
    assert starts.dtype == torch.long and starts.shape == (2,)
    assert 0 <= int(starts[0]) <= 12 - SEGMENT and 0 <= int(starts[1]) <= 9 - SEGMENT
    assert spec_mask.shape == (2, 1, 12) and spec_mask[1, 0, 9:].sum() == 0 and spec_mask[1, 0, :9].all()
    assert len(latents) == 6 and all(t.shape == (2, 8, 12) for t in latents)
    assert pred_lf0.shape == norm_lf0.shape == lf0.shape == (2, 1, 12)
    torch.testing.assert_close(lf0, f0_to_lf0(f0))
    audio.abs().mean().backward()  # the graph reaches the decoder's weights
    assert model.dec.conv_pre.weight_v.grad is not None


def test_forward_without_f0_decoder_returns_zeros():
    model = small_model(use_automatic_f0_prediction=False).train()
    c, f0, uv = inputs(batch=1, frames=8)
    out = model(c, f0 + 1, uv, torch.rand(1, SPEC_CHANNELS, 8), torch.tensor([[1]]), torch.tensor([8]),
                torch.tensor([8]))
    assert not hasattr(model, "f0_decoder")
    assert out[4] == 0 and out[5] == 0 and out[6] == 0


def test_infer_shapes_and_determinism(model):
    c, f0, uv = inputs(batch=2)
    rng_before = torch.get_rng_state()
    a, used_f0 = model.infer(c, f0, uv, g=torch.tensor([0, 2]))
    b, _ = model.infer(c, f0, uv, g=torch.tensor([0, 2]))
    other, _ = model.infer(c, f0, uv, g=torch.tensor([0, 2]), seed=7)
    assert torch.equal(torch.get_rng_state(), rng_before), "infer must not touch the global RNG"
    assert a.shape == (2, 1, 12 * HOP) and torch.equal(used_f0, f0)
    assert torch.equal(a, b)
    assert not torch.allclose(a, other)


def test_infer_draws_like_4_1_global_seeding(model):
    """4.1 seeds the global RNG and draws prior noise, then sine phases and noises, in the dec; the local
    generator must give exactly those numbers (CPU), so the output is bit-identical."""
    c, f0, uv = inputs()
    g = torch.tensor([[1]])
    expected, _ = model.infer(c, f0, uv, g=g, noice_scale=0.4)
    with torch.no_grad():
        torch.manual_seed(52468)
        spk = model.speaker_embedding(g)
        mask = torch.ones(1, 1, c.shape[2])
        x = model.content_embedding(c, uv, mask)
        z_p, m_p, logs_p, _ = model.enc_p(x, mask, f0_to_coarse(f0), noise_scale=0.4)
        audio = model.dec(model.flow(z_p, mask, g=spk, reverse=True), f0, g=spk)
    assert torch.equal(audio, expected)


def test_noise_scale_zero_uses_the_prior_mean(model):
    c, f0, uv = inputs()
    g = torch.tensor([1])
    out_a, _ = model.infer(c, f0, uv, g=g, noice_scale=0.0)
    out_b, _ = model.infer(c, f0, uv, g=g, noice_scale=0.0)
    assert torch.equal(out_a, out_b)
    with torch.no_grad():  # with scale 0 the prior noise has no effect: pass an explicit huge noise instead
        mask = torch.ones(1, 1, c.shape[2])
        x = model.content_embedding(c, uv, mask)
        z, m, _, _ = model.enc_p(x, mask, f0_to_coarse(f0), noise_scale=0.0, noise=torch.full_like(x[:, :8], 1e3))
    assert torch.equal(z, m)


def test_speaker_mix_one_hot_equals_speaker_id(model):
    c, f0, uv = inputs(frames=10)
    by_id, _ = model.infer(c, f0, uv, g=torch.tensor([[2]]))
    weights = torch.zeros(10, 3)
    weights[:, 2] = 1.0
    by_mix, _ = model.infer(c, f0, uv, g=weights)
    torch.testing.assert_close(by_mix, by_id, rtol=0, atol=1e-5)  # only matmul blocking differs


def test_speaker_mix_is_a_per_frame_weighted_sum(model):
    weights = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    emb = model.speaker_embedding(weights)
    assert emb.shape == (1, SMALL["gin_channels"], 3)
    table = model.emb_g.weight.detach()
    torch.testing.assert_close(emb[0, :, 1], 0.5 * table[0] + 0.5 * table[1])
    torch.testing.assert_close(emb[0, :, 2], 0.2 * table[0] + 0.3 * table[1] + 0.5 * table[2])
    assert model.speaker_embedding(torch.tensor([1, 2])).shape == (2, SMALL["gin_channels"], 1)


def test_predict_f0_replaces_f0(model):
    c, f0, uv = inputs()
    audio, predicted = model.infer(c, f0, uv, g=torch.tensor([0]), predict_f0=True)
    assert predicted.shape == f0.shape and torch.isfinite(predicted).all()
    assert not torch.allclose(predicted, f0)
    assert audio.shape == (1, 1, 12 * HOP) and torch.isfinite(audio).all()
    plain = small_model(use_automatic_f0_prediction=False)
    _, kept = plain.infer(c, f0, uv, g=torch.tensor([0]), predict_f0=True)
    assert torch.equal(kept, f0)


def test_lf0_conversions_and_normalisation():
    f0 = torch.tensor([[0.0, 100.0, 200.0, 400.0]])
    lf0 = f0_to_lf0(f0)
    torch.testing.assert_close(lf0[0, 0, 2], torch.tensor(2595 * math.log10(1 + 200 / 700) / 500))
    torch.testing.assert_close(lf0_to_f0(lf0), f0, rtol=1e-5, atol=1e-3)
    uv = torch.tensor([[0.0, 1.0, 1.0, 1.0]])
    mask = torch.ones(1, 1, 4)
    normed = normalize_f0(lf0, mask, uv, random_scale=False)
    torch.testing.assert_close(normed, lf0 - lf0[0, 0, 1:].mean())
    unvoiced = normalize_f0(lf0, mask, torch.zeros(1, 4), random_scale=False)  # mean = sum·0 / 9999 = 0
    torch.testing.assert_close(unvoiced, lf0)
    scaled = normalize_f0(lf0, mask, uv, random_scale=True, generator=torch.Generator().manual_seed(0))
    ratio = scaled[0, 0, 1:] / normed[0, 0, 1:]
    assert 0.8 <= float(ratio[0]) <= 1.2 and torch.allclose(ratio, ratio[0].expand(3))
    with pytest.raises(F0NormalizationError, match="NaN") as info:
        normalize_f0(f0_to_lf0(torch.tensor([[float("nan"), 100.0]])), torch.ones(1, 1, 2), torch.ones(1, 2))
    assert isinstance(info.value, SvcError)


def test_sine_source_matches_float64_reference():
    """Sample mode: phase = initial phase + running sum of k·f0/sr (draws: rand [B, 9], then randn [B, N, 9])."""
    frames = 30
    f0 = torch.linspace(150, 450, frames)[None]
    f0[:, 10:13] = 0
    sines, uv, _ = SineGen(44100, 8)(f0, HOP, generator=torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(5)
    start = torch.rand(1, 9, generator=gen).double()
    start[:, 0] = 0
    noise = torch.randn(1, frames * HOP, 9, generator=gen).double()
    f0_samples = f0.double().repeat_interleave(HOP, 1)[..., None] * torch.arange(1, 10).double()
    phase = start[:, None] + torch.cumsum((f0_samples / 44100) % 1, dim=1)
    voiced = (f0_samples[..., :1] > 0).double()
    expected = 0.1 * torch.sin(2 * math.pi * phase) * voiced + (voiced * 0.003 + (1 - voiced) * 0.1 / 3) * noise
    assert sines.shape == (1, frames * HOP, 9) and uv.shape == (1, frames * HOP, 1)
    torch.testing.assert_close(sines.double(), expected, rtol=0, atol=2e-5)  # float32 running sum over 15k samples


def test_onnx_mode_source_and_decoder_match_sample_mode(model):
    """ONNX mode builds the phase per frame; on a steady (and on a gliding) f0 it agrees with the sample mode
    to float rounding: sines within 1e-5 over 100k samples, decoder audio within 1e-4."""
    frames = 200
    glide = (220 * 2 ** (0.5 / 12 * torch.sin(torch.arange(frames) / 86.13 * 2 * math.pi * 5.5)))[None]
    glide[:, 50:60] = 0
    gen = SineGen(44100, 8)
    sample, _, _ = gen(glide, HOP, onnx_mode=False, generator=torch.Generator().manual_seed(3))
    framewise, _, _ = gen(glide, HOP, onnx_mode=True, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(framewise, sample, rtol=0, atol=1e-5)

    z = torch.randn(1, 8, 16)
    steady = torch.full((1, 16), 220.0)
    g = model.speaker_embedding(torch.tensor([1]))
    with torch.no_grad():
        normal = model.dec(z, steady, g=g, generator=torch.Generator().manual_seed(9))
        model.dec.onnx_mode = True
        try:
            onnx = model.dec(z, steady, g=g, generator=torch.Generator().manual_seed(9))
        finally:
            model.dec.onnx_mode = False
    torch.testing.assert_close(onnx, normal, rtol=0, atol=1e-4)


@pytest.mark.parametrize("vocoder", ["nsf-hifigan", "nsf-snake-hifigan"])
def test_a_decoded_window_equals_the_whole_decode_there_and_its_context_bounds_the_reach(vocoder):
    """`frames=(start, stop)` decodes those frames plus context_frames() each side: the same samples as a whole
    decode (with per-frame speaker-mix conditioning too), zeros elsewhere; and no input frame beyond the
    context changes the kept samples, while the one just inside the true reach does."""
    model = small_model(vocoder_name=vocoder)
    dec = model.dec
    context = dec.context_frames()
    assert context == {"nsf-hifigan": 16, "nsf-snake-hifigan": 41}[vocoder]  # 4.1's 44.1 kHz layout
    frames, start, stop = 160, 70, 90
    z = torch.randn(1, SMALL["inter_channels"], frames, generator=torch.Generator().manual_seed(4))
    f0 = torch.full((1, frames), 220.0)
    f0[:, 75:80] = 0
    mix = torch.softmax(torch.randn(frames, 3, generator=torch.Generator().manual_seed(5)), dim=1)
    kept = slice(start * HOP, stop * HOP)

    def decode(z, g, window=None):
        with torch.no_grad():
            return dec(z, f0, g=g, generator=torch.Generator().manual_seed(9), frames=window)

    for g in (model.speaker_embedding(torch.tensor([1])), model.speaker_embedding(mix)):
        whole, window = decode(z, g), decode(z, g, (start, stop))
        torch.testing.assert_close(window[..., kept], whole[..., kept], rtol=0, atol=1e-5)
        assert window[..., :kept.start].abs().max() == 0 and window[..., kept.stop:].abs().max() == 0
    g = model.speaker_embedding(torch.tensor([1]))
    whole = decode(z, g)
    far = z.clone()
    far[..., :start - context] += 3
    far[..., stop + context:] -= 3
    torch.testing.assert_close(decode(far, g)[..., kept], whole[..., kept], rtol=0, atol=1e-6)
    near = z.clone()
    near[..., start - 2] += 3
    assert (decode(near, g)[..., kept] - whole[..., kept]).abs().max() > 1e-5  # the probe does detect a reach


def test_relative_position_skews_match_index_definition():
    length = 6
    rel = torch.randn(2, 2, length, 2 * length - 1)
    absolute = relative_to_absolute(rel)
    weights = torch.randn(2, 2, length, length)
    back = absolute_to_relative(weights)
    for i in range(length):
        for j in range(length):
            assert torch.equal(absolute[:, :, i, j], rel[:, :, i, j - i + length - 1])
            assert torch.equal(back[:, :, i, j - i + length - 1], weights[:, :, i, j])
    assert back[:, :, 0, :length - 1].abs().sum() == 0  # offsets before the sequence start stay empty


def test_relative_attention_ignores_offsets_beyond_window():
    """Keys farther than the window get no relative bias: a key/value pair moved between two such far
    positions (both outside the window of query 0) leaves query 0's output unchanged."""
    torch.manual_seed(0)
    attn = MultiHeadAttention(8, 8, 2, window_size=2).eval()
    x = torch.randn(1, 8, 7)
    swapped = x.clone()
    swapped[:, :, [4, 6]] = x[:, :, [6, 4]]
    with torch.no_grad():
        out, out_swapped = attn(x, x), attn(swapped, swapped)
    torch.testing.assert_close(out[:, :, 0], out_swapped[:, :, 0])
    near = x.clone()
    near[:, :, [1, 6]] = x[:, :, [6, 1]]
    with torch.no_grad():
        assert not torch.allclose(attn(near, near)[:, :, 0], out[:, :, 0])


@pytest.mark.parametrize("flow_kind", ["residual", "residual_shared_depthwise", "transformer_shared"])
def test_flows_are_invertible(flow_kind):
    torch.manual_seed(0)
    if flow_kind == "transformer_shared":
        flow = TransformerCouplingBlock(8, 16, 32, 2, 2, 5, 0.0, n_flows=3, gin_channels=6, share_parameter=True)
    else:
        shared = flow_kind != "residual"
        flow = ResidualCouplingBlock(8, 16, 5, 1, 3, gin_channels=6, share_parameter=shared, depthwise=shared)
    with torch.no_grad():
        for coupling in flow.flows[::2]:
            coupling.post.weight.normal_(0, 0.3)
    flow.eval()
    x = torch.randn(2, 8, 11)
    mask = torch.ones(2, 1, 11)
    g = torch.randn(2, 6, 1)
    with torch.no_grad():
        z = flow(x, mask, g=g)
        back = flow(z, mask, g=g, reverse=True)
    assert not torch.allclose(z, x)
    torch.testing.assert_close(back, x, rtol=1e-5, atol=1e-5)
    if flow_kind != "residual":
        assert all(coupling.enc is flow.wn for coupling in flow.flows[::2])


def test_depthwise_option_is_per_instance_not_global():
    depthwise = WN(8, 5, 1, 2, gin_channels=4, depthwise=True)
    plain = WN(8, 5, 1, 2, gin_channels=4)
    assert isinstance(depthwise.in_layers[0], DepthwiseSeparableConv1d)
    assert not isinstance(plain.in_layers[0], DepthwiseSeparableConv1d)
    tiny_then_normal = [small_model(use_depthwise_conv=flag) for flag in (True, False)]
    assert isinstance(tiny_then_normal[0].enc_q.enc.in_layers[0], DepthwiseSeparableConv1d)
    assert not isinstance(tiny_then_normal[1].enc_q.enc.in_layers[0], DepthwiseSeparableConv1d)
    assert not isinstance(tiny_then_normal[1].flow.flows[0].enc.in_layers[0], DepthwiseSeparableConv1d)


def test_snake_decoder_runs_and_alias_filters_are_lowpass():
    model = small_model(vocoder_name="nsf-snake-hifigan")
    assert "dec.snakes.0.act.alpha" in model.state_dict() and "dec.snake_post.upsample.filter" in model.state_dict()
    c, f0, uv = inputs(frames=6)
    audio, _ = model.infer(c, f0, uv, g=torch.tensor([0]))
    assert audio.shape == (1, 1, 6 * HOP) and torch.isfinite(audio).all()
    taps = kaiser_sinc_filter(0.25, 0.3, 12)[0, 0]
    torch.testing.assert_close(taps.sum(), torch.tensor(1.0))
    torch.testing.assert_close(taps, taps.flip(0))
    act = SnakeAlias(3)
    with torch.no_grad():  # alpha = beta = 0: x + sin²(x) on a constant stays that constant
        out = act(torch.full((1, 3, 20), 0.7))
    torch.testing.assert_close(out, torch.full((1, 3, 20), 0.7 + math.sin(0.7) ** 2), rtol=0, atol=1e-5)


def test_unknown_vocoder_falls_back_to_nsf_hifigan():
    cfg = SynthesizerConfig.from_kwargs(1025, 20, vocoder_name="no-such-vocoder", unknown_key=1)
    assert cfg.vocoder_name == "nsf-hifigan"


def test_from_config_uses_template_sizes():
    hps = load_template("config_template.json")
    cfg = SynthesizerConfig.from_hparams(hps)
    assert cfg.spec_channels == 1025 and cfg.segment_size == 20 and cfg.hop_length == 512
    assert cfg.upsample_rates == (8, 8, 2, 2, 2) and cfg.resblock_dilation_sizes[0] == (1, 3, 5)
    small = dataclasses.replace(cfg, **{k: v for k, v in SMALL.items() if k in {f.name for f in
                                                                              dataclasses.fields(cfg)}})
    model = SynthesizerTrn.from_dims(dataclasses.replace(small, spec_channels=SPEC_CHANNELS))
    assert model.config.filter_channels == 32 and model.segment_size == 20


def test_state_dict_round_trip_through_file(tmp_path, model):
    path = tmp_path / "G_1.pth"
    torch_save({"model": model.state_dict(), "iteration": 1, "optimizer": None, "learning_rate": 1e-4}, path)
    fresh = small_model(seed=123)
    report = load_generator_weights(fresh, safe_torch_load(path, map_location="cpu"))
    assert not report.missing and not report.unexpected and not report.mismatched
    fresh.load_state_dict(model.state_dict(), strict=True)
    c, f0, uv = inputs()
    assert torch.equal(fresh.infer(c, f0, uv, g=torch.tensor([1]))[0], model.infer(c, f0, uv, g=torch.tensor([1]))[0])


def test_compressed_checkpoint_without_enc_q_loads_for_inference(model):
    compressed = {k: v.half() for k, v in model.state_dict().items() if not k.startswith("enc_q.")}
    fresh = small_model(seed=99)
    with pytest.raises(RuntimeError):
        fresh.load_state_dict(compressed, strict=True)
    report = load_generator_weights(fresh, compressed)
    assert report.skipped_prefixes == ["enc_q."] and all(k.startswith("enc_q.") for k in report.missing)
    assert fresh.emb_g.weight.dtype == torch.float32
    torch.testing.assert_close(fresh.emb_g.weight, model.emb_g.weight.half().float())
    c, f0, uv = inputs()
    audio, _ = fresh.infer(c, f0, uv, g=torch.tensor([0]))
    reference, _ = model.infer(c, f0, uv, g=torch.tensor([0]))
    torch.testing.assert_close(audio, reference, rtol=0, atol=5e-2)  # fp16-rounded weights


def test_a_generator_built_for_its_weights_equals_one_built_and_then_loaded(model):
    built, report = generator_for_weights(SMALL_HPS, {"model": model.state_dict(), "iteration": 3})
    assert report.complete and list(built.state_dict()) == list(model.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(built.state_dict().values(), model.state_dict().values()))
    c, f0, uv = inputs()
    assert torch.equal(built.eval().infer(c, f0, uv, g=torch.tensor([1]))[0],
                       model.infer(c, f0, uv, g=torch.tensor([1]))[0])


def test_a_part_the_file_lacks_gets_its_usual_random_weights(model):
    compressed = {k: v for k, v in model.state_dict().items() if not k.startswith("enc_q.")}
    built, report = generator_for_weights(SMALL_HPS, compressed, optional_prefixes=("enc_q.",))
    assert report.skipped_prefixes == ["enc_q."]
    enc_q = dict(built.enc_q.named_parameters())
    assert all(p.abs().sum() > 0 for name, p in enc_q.items() if not name.endswith("bias")), "not drawn"
    built.remove_weight_norm()
    assert all(torch.isfinite(p).all() for p in built.parameters())
    c, f0, uv = inputs()
    assert torch.equal(built.eval().infer(c, f0, uv)[0], model.infer(c, f0, uv)[0])


def test_skip_random_init_fills_zeros_in_its_own_thread_only():
    import threading

    other = {}
    with SkipRandomInit():
        layer = torch.nn.Conv1d(4, 4, 3)
        thread = threading.Thread(target=lambda: other.update(layer=torch.nn.Conv1d(4, 4, 3)))
        thread.start()
        thread.join()
    assert not layer.weight.any() and not layer.bias.any()
    assert other["layer"].weight.abs().min() > 0


def test_load_reports_bad_keys_clearly(model):
    good = model.state_dict()
    partial = {k: v for k, v in good.items() if k != "pre.weight"}
    with pytest.raises(SvcError, match=r"missing keys: pre\.weight"):
        load_generator_weights(small_model(), partial)
    with pytest.raises(SvcError, match=r"unexpected keys: extra\.weight"):
        load_generator_weights(small_model(), {**good, "extra.weight": torch.zeros(1)})
    more_speakers = small_model(n_speakers=5)
    with pytest.raises(SvcError, match=r"emb_g\.weight checkpoint \(3, 16\) vs model \(5, 16\)"):
        load_generator_weights(more_speakers, good)
    report = load_generator_weights(more_speakers, good, reinit_mismatched=("emb_g.",))
    assert [m[0] for m in report.mismatched] == ["emb_g.weight"]
    torch.testing.assert_close(more_speakers.pre.weight, model.pre.weight)
    no_half_enc_q = {k: v for k, v in good.items() if not k.startswith("enc_q.enc.")}
    with pytest.raises(SvcError, match="missing keys: enc_q.enc"):  # partly present enc_q is corruption
        load_generator_weights(small_model(), no_half_enc_q)


def test_remove_weight_norm_keeps_output():
    model = small_model()
    c, f0, uv = inputs()
    before, _ = model.infer(c, f0, uv, g=torch.tensor([1]))
    model.remove_weight_norm()
    assert not any(k.endswith("weight_g") for k in model.state_dict())
    after, _ = model.infer(c, f0, uv, g=torch.tensor([1]))
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)


def test_models_exposes_the_discriminator():
    assert MultiPeriodDiscriminator.__module__ == "modules.discriminator"


def test_relative_embeddings_follow_the_window():
    attn = MultiHeadAttention(8, 8, 2, window_size=2)
    table = attn.emb_rel_k.detach()
    for length in (1, 2, 3, 4, 7):
        used = attn._relative_embeddings(table, length)
        assert used.shape == (1, 2 * length - 1, 4)
        for index, offset in enumerate(range(-(length - 1), length)):
            expected = table[:, offset + 2] if abs(offset) <= 2 else torch.zeros(1, 4)
            assert torch.equal(used[:, index], expected)


def test_onnx_pieces_export_with_dynamic_length(tmp_path, model):
    """enc_p with given noise -> flow reverse -> dec in ONNX mode, exported once and run at other lengths."""
    ort = pytest.importorskip("onnxruntime")

    class Pieces(torch.nn.Module):
        def __init__(self, net: SynthesizerTrn):
            super().__init__()
            self.net = net

        def forward(self, c, f0, uv, noise, sid):
            g = self.net.speaker_embedding(sid)
            mask = torch.ones_like(f0).unsqueeze(1)
            x = self.net.content_embedding(c, uv, mask)
            z_p, _, _, _ = self.net.enc_p(x, mask, f0_to_coarse(f0), noise=noise)
            z = self.net.flow(z_p, mask, g=g, reverse=True)
            return z, self.net.dec(z * mask, f0, g=g)

    def sample(frames: int):
        c, f0, uv = inputs(frames=frames)
        return c, f0, uv, 0.3 * torch.randn(1, 8, frames), torch.tensor([2])

    names = ["c", "f0", "uv", "noise", "sid"]
    pieces = Pieces(model).eval()
    model.dec.onnx_mode = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(pieces, sample(12), tmp_path / "g.onnx", opset_version=16, dynamo=False,
                              input_names=names, output_names=["z", "audio"],
                              dynamic_axes={"c": [2], "f0": [1], "uv": [1], "noise": [2]})
        session = ort.InferenceSession(str(tmp_path / "g.onnx"))
        for frames in (5, 21):
            args = sample(frames)
            z, audio = session.run(None, {n: a.numpy() for n, a in zip(names, args)})
            with torch.no_grad():
                z_ref, audio_ref = pieces(*args)
            torch.testing.assert_close(torch.from_numpy(z), z_ref, rtol=0, atol=1e-5)
            assert audio.shape == (1, 1, frames * HOP) and abs(audio).max() > 0
            # in-graph random phases/noise differ from torch's draws (observed error ~0.5% of the peak)
            assert float(abs(torch.from_numpy(audio) - audio_ref).max()) < 0.05 * float(audio_ref.abs().max())
    finally:
        model.dec.onnx_mode = False


def test_windowed_relative_terms_equal_the_full_skew():
    """The banded relative-position terms used at run time equal the full [T, 2T-1] formulation."""
    torch.manual_seed(0)
    attn = MultiHeadAttention(8, 8, 2, window_size=2).eval()
    table_k, table_v = attn.emb_rel_k.detach(), attn.emb_rel_v.detach()
    for length in (1, 2, 3, 7):
        q = torch.randn(1, 2, length, 4)
        w = torch.softmax(torch.randn(1, 2, length, length), -1)
        rel_k = attn._relative_embeddings(table_k, length)
        rel_v = attn._relative_embeddings(table_v, length)
        torch.testing.assert_close(band_to_absolute(q @ table_k.transpose(1, 2)[None], 2),
                                   relative_to_absolute(q @ rel_k.transpose(1, 2)[None]))
        torch.testing.assert_close(absolute_to_band(w, 2) @ table_v[None], absolute_to_relative(w) @ rel_v[None])
