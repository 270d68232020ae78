"""The linear-time mLSTM reference equals the official quadratic parallel form; chunking carries state."""

import torch

import csrc


def _inputs(B=2, H=3, T=37, D=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, T, D, generator=g) for _ in range(3))
    ig = torch.randn(B, H, T, generator=g) * 2
    fg = torch.randn(B, H, T, generator=g) * 2 + 3
    return q, k, v, ig, fg


def test_mlstm_recurrent_reference_equals_parallel_form():
    q, k, v, ig, fg = _inputs()
    par = csrc.mlstm_parallel_reference(q, k, v, ig, fg)
    rec = csrc.mlstm(q, k, v, ig, fg, backend="reference")
    torch.testing.assert_close(rec, par, atol=2e-4, rtol=1e-4)


def test_mlstm_reference_chunked_equals_one_pass():
    q, k, v, ig, fg = _inputs()
    full = csrc.mlstm_reference(q, k, v, ig, fg)
    h1, st = csrc.mlstm_reference(q[:, :, :20], k[:, :, :20], v[:, :, :20], ig[..., :20], fg[..., :20], return_state=True)
    h2 = csrc.mlstm_reference(q[:, :, 20:], k[:, :, 20:], v[:, :, 20:], ig[..., 20:], fg[..., 20:], state=st)
    torch.testing.assert_close(torch.cat([h1, h2], dim=2), full)
