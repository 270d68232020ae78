"""Con-RWKV HEAR module: RWKV-6 time-mix against a per-step transcription of the x060 formulas, compiled
vs reference WKV-6 scan, causality of the Con block, strict loading of RWKV-6-format keys, timestamps,
hear-validator."""

from __future__ import annotations

import copy
import os
import subprocess

import pytest
import torch
import torch.nn.functional as F

from _model_helpers import HEARSCAN, hearscan_validate_available
from hear_modules import conrwkv
from hearscan_core.errors import AudioInputError, CheckpointError, UserFacingError


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the shared 2-core test machine: oversubscribed threads are 10x slower
    yield
    torch.set_num_threads(before)


def _small_model(n_layer=2, backend="auto", seed=0):
    cfg = conrwkv.ConRWKVConfig.for_width(128)
    cfg.n_layer = n_layer
    model = conrwkv.ConRWKV(cfg, scan_backend=backend)
    conrwkv._random_init(model, seed=seed)
    return model.eval()


def _compiled_wkv6_error() -> str | None:
    from csrc.wkv6 import wkv6

    x = torch.randn(1, 3, 1, 64)
    try:
        wkv6(x, x, x, -torch.rand_like(x) - 0.5, torch.randn(1, 64), backend="compiled")
    except Exception as err:
        return f"{type(err).__name__}: {err}"
    return None


def _time_mix_by_hand(att: conrwkv.TimeMix6, x: torch.Tensor) -> torch.Tensor:
    """RWKV-6 x060 time-mix written step by step from the formulas (no csrc), in float64."""
    att = att.double()
    x = x.double()
    B, T, C = x.shape
    H, N = att.n_head, att.head_size
    out = torch.zeros_like(x)
    for b in range(B):
        S = torch.zeros(H, N, N, dtype=torch.float64)
        prev = torch.zeros(C, dtype=torch.float64)
        ys, gs = [], []
        for t in range(T):
            xt = x[b, t]
            xx = prev - xt
            prev = xt
            mix = torch.tanh((xt + xx * att.time_maa_x[0, 0]) @ att.time_maa_w1).view(5, -1)
            mw, mk, mv, mr, mg = (mix[i] @ att.time_maa_w2[i] for i in range(5))
            xw = xt + xx * (att.time_maa_w[0, 0] + mw)
            xk = xt + xx * (att.time_maa_k[0, 0] + mk)
            xv = xt + xx * (att.time_maa_v[0, 0] + mv)
            xr = xt + xx * (att.time_maa_r[0, 0] + mr)
            xg = xt + xx * (att.time_maa_g[0, 0] + mg)
            r, k, v = (lin(z).view(H, N) for lin, z in ((att.receptance, xr), (att.key, xk), (att.value, xv)))
            w = (att.time_decay[0, 0] + torch.tanh(xw @ att.time_decay_w1) @ att.time_decay_w2).view(H, N)
            kv = v[:, :, None] * k[:, None, :]  # (H, i = value, j = key)
            y = ((S + att.time_faaaa[:, None, :] * kv) * r[:, None, :]).sum(-1)
            S = S * torch.exp(-torch.exp(w))[:, None, :] + kv
            ys.append(y.reshape(C))
            gs.append(F.silu(att.gate(xg)))
        y = F.group_norm(torch.stack(ys), H, att.ln_x.weight, att.ln_x.bias, eps=6.4e-4)
        out[b] = att.output(y * torch.stack(gs))
    return out.float()


def test_time_mix_matches_the_x060_formulas():
    model = _small_model(n_layer=1, backend="reference")
    att = model.blocks[0].att
    x = torch.randn(2, 23, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = att(x, "reference")
        want = _time_mix_by_hand(copy.deepcopy(att), x)
    torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-4)


@pytest.mark.skipif(_compiled_wkv6_error() is not None, reason=f"compiled wkv6 unavailable: {_compiled_wkv6_error()}")
def test_compiled_scan_matches_reference():
    audio = torch.randn(2, 24000, generator=torch.Generator().manual_seed(0)) * 0.1
    ref = _small_model(backend="reference")
    comp = _small_model(backend="compiled")
    torch.testing.assert_close(conrwkv.get_scene_embeddings(audio, comp), conrwkv.get_scene_embeddings(audio, ref),
                               atol=1e-4, rtol=1e-4)
    e1, t1 = conrwkv.get_timestamp_embeddings(audio, comp)
    e2, t2 = conrwkv.get_timestamp_embeddings(audio, ref)
    torch.testing.assert_close(e1, e2, atol=1e-4, rtol=1e-4)
    assert torch.equal(t1, t2)


def test_model_is_causal_over_tokens():
    """RWKV-6 scan, token shift and the left-padded Con convolution all look only backwards."""
    model = _small_model()
    fb = torch.randn(1, 80, 128, generator=torch.Generator().manual_seed(2))
    changed = fb.clone()
    changed[:, 40:] += 1.0  # tokens 10.. change
    with torch.no_grad():
        a, b = model.tokens(fb), model.tokens(changed)
    torch.testing.assert_close(a[:, :10], b[:, :10], atol=0, rtol=0)
    assert (a[:, 10:] - b[:, 10:]).abs().max() > 1e-3


def test_con_block_is_ln_conv_ln_residual():
    """The Con step alone: x + LN_c(DWConv_k5(left pad 4; LN_c(x))), one LayerNorm used twice."""
    block = _small_model(n_layer=1).blocks[0]
    x = torch.randn(1, 12, 128)
    ln = block.layer_norm
    want = x.clone()
    for t in range(12):
        window = torch.stack([ln(x[0, s]) if s >= 0 else torch.zeros(128) for s in range(t - 4, t + 1)], dim=1)
        conv = (window * block.depthwise_conv.weight[:, 0, :]).sum(1) + block.depthwise_conv.bias
        want[0, t] = x[0, t] + ln(conv)
    c = F.pad(ln(x).transpose(1, 2), (4, 0))
    got = x + ln(block.depthwise_conv(c).transpose(1, 2))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_strict_round_trip_in_rwkv6_key_format(tmp_path):
    model = _small_model()
    sd = model.state_dict()
    for key in ("blocks.0.att.time_maa_w1", "blocks.1.att.time_faaaa", "blocks.0.ln0.weight", "blocks.1.ffn.time_maa_r",
                "blocks.1.layer_norm.weight", "blocks.1.depthwise_conv.bias", "blocks.0.att.ln_x.bias"):
        assert key in sd
    assert sd["blocks.0.depthwise_conv.weight"].shape == (128, 1, 5)
    # as the official Block saves it: DataParallel prefix, bf16, plus its unused ln_even / batch_norm
    official = {f"module.{k}": v.bfloat16() for k, v in sd.items()}
    for i in range(2):
        official[f"module.blocks.{i}.ln_even.weight"] = torch.ones(128)
        official[f"module.blocks.{i}.batch_norm.running_mean"] = torch.zeros(128)
    torch.save(official, tmp_path / "con.pth")
    loaded = conrwkv.load_model(str(tmp_path / "con.pth"), device="cpu")
    assert loaded.cfg == model.cfg
    for k, v in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v.bfloat16().float(), atol=0, rtol=0)


def test_strict_loading_lists_mismatches(tmp_path):
    sd = _small_model().state_dict()
    del sd["blocks.1.att.time_decay"]
    sd["blocks.0.att.time_mix_k"] = torch.zeros(1, 1, 128)  # an RWKV-4/5 key: not this format
    sd["blocks.1.ffn.value.weight"] = torch.zeros(128, 7)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as err:
        conrwkv.load_model(str(tmp_path / "bad.pth"), device="cpu")
    for key in ("blocks.1.att.time_decay", "blocks.0.att.time_mix_k", "blocks.1.ffn.value.weight"):
        assert key in str(err.value)
    torch.save({"emb.weight": torch.zeros(3, 3)}, tmp_path / "lm.pth")
    with pytest.raises(CheckpointError, match="not a Con-RWKV state_dict"):
        conrwkv.load_model(str(tmp_path / "lm.pth"))


def test_timestamps_and_short_clips():
    model = _small_model()
    emb, ts = conrwkv.get_timestamp_embeddings(torch.zeros(2, 17120), model)  # 1.07 s of silence
    assert emb.shape == (2, 27, 128) and torch.isfinite(emb).all()  # centres 27.5 .. 1067.5 ms
    assert torch.allclose(ts[0, 1:] - ts[0, :-1], torch.tensor(40.0))
    assert ts[0, 0] == pytest.approx(27.5) and ts[0, -1] <= 1070 and ts[0, -1] > 1070 - 40
    with pytest.raises(AudioInputError):
        conrwkv.get_scene_embeddings(torch.zeros(1, 300), model)
    emb, ts = conrwkv.get_timestamp_embeddings(torch.zeros(1, 400), model)  # 25 ms: one stamp, its middle
    assert ts.shape == (1, 1) and ts[0, 0] == pytest.approx(12.5)
    emb = conrwkv.get_scene_embeddings(torch.randn(3, 8000) * 0.1, model)
    assert emb.shape == (3, 128) and emb.dtype == torch.float32


def test_random_default_and_options(capsys):
    with pytest.warns(UserWarning, match="No audio weights are published"):
        model = conrwkv.load_model(device="cpu", dtype="bfloat16")
    assert "RANDOM weights" in capsys.readouterr().err
    assert model.ln_out.weight.dtype == torch.bfloat16 and model.scene_embedding_size == 192
    with pytest.raises(UserFacingError, match="unknown option"):
        conrwkv.load_model(depth=3)
    with pytest.raises(UserFacingError, match="scan_backend"):
        conrwkv.load_model(scan_backend="fast")


@pytest.mark.skipif(not hearscan_validate_available(), reason="`hearscan validate` not available yet")
def test_hear_validator_passes_with_checkpoint(tmp_path):
    """(Without weights: tests/test_modules.py, for every module.)"""
    torch.save(_small_model().state_dict(), tmp_path / "con.pth")
    cmd = [str(HEARSCAN), "validate", "hear_modules.conrwkv", "--device", "cpu", "--model", str(tmp_path / "con.pth")]
    out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    audio = torch.randn(2, 16000, generator=torch.Generator().manual_seed(3)) * 0.1
    cpu = _small_model()
    gpu = _small_model().cuda()
    torch.testing.assert_close(conrwkv.get_scene_embeddings(audio.cuda(), gpu).cpu(),
                               conrwkv.get_scene_embeddings(audio, cpu), atol=1e-3, rtol=1e-3)
