"""RWKV-LM's own CUDA kernels, for `hearscan bench kernels --device cuda --rwkv-cuda DIR`.

hearscan ships none of RWKV-LM's code: DIR is a checkout of github.com/BlinkDL/RWKV-LM (or a folder that
holds its files at the same relative paths), and its kernels are built here with the flags RWKV-LM's
own training code uses.  The kernels compared:

- WKV-7: `RWKV-v7/train_temp/cuda/wkv7_cuda{,_fp32}.cu` + `wkv7_op{,_fp32}.cpp` (op
  `wind_backstepping`, the x070 kernel of RWKV-LM's training code; the fp32 or bf16 build to match the
  inputs, one per process since both register the same op name).  Same decay convention as ours
  (exp(-exp(w))); T must be a multiple of 16; its forward also writes the state every 16 steps and
  the a-products for its backward pass, buffers that are allocated per call here as RWKV-LM does.
- WKV-6: `RWKV-v5/cuda/wkv6_cuda.cu` + `wkv6_op.cpp` (op `wkv6`), bfloat16 only (u too).

`--mamba-cuda DIR` (a checkout of github.com/state-spaces/mamba) adds mamba's `selective_scan_cuda.fwd`
for the selective scan, built with mamba's own nvcc flags from `csrc/selective_scan/`: only its forward
sources (the backward ones take many minutes); the extension still refers to the backward entry points,
so it is imported with lazy symbol binding and only `fwd` is ever called.

Each returns the output, so the benchmark also reports the largest difference from our kernel's.
"""

from __future__ import annotations

from pathlib import Path

FLAGS = ["-res-usage", "--use_fast_math", "-O3", "-Xptxas -O3", "--extra-device-vectorization"]
MAMBA_FLAGS = ["-O3", "-std=c++17", "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
               "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
               "-U__CUDA_NO_BFLOAT162_OPERATORS__", "-U__CUDA_NO_BFLOAT162_CONVERSIONS__",
               "--expt-relaxed-constexpr", "--expt-extended-lambda", "--use_fast_math", "-lineinfo"]


def _build(project: str, option: str, name: str, sources: list[Path], cuda_flags: list[str], log, **extra):
    """Build one official extension for the GPU in use; `project`/`option` name it in the messages."""
    from torch.utils import cpp_extension

    from csrc._build import _cuda_capability

    missing = [str(s) for s in sources if not s.exists()]
    if missing:
        raise FileNotFoundError(
            f"{project} source(s) not found: {', '.join(missing)} (is {option} a checkout of {project}?)"
        )
    cc = _cuda_capability()
    log(f"  building {project}'s {name} ({', '.join(s.name for s in sources)}) ...")
    return cpp_extension.load(name=name, sources=[str(s) for s in sources], verbose=False,
                              extra_cuda_cflags=cuda_flags + [f"-gencode=arch=compute_{cc},code=sm_{cc}"], **extra)


def load_mamba_kernel(root: str, log) -> dict:
    """{"selective_scan": (label, run(kwargs) -> out)} from a mamba checkout (forward only)."""
    import os
    import sys

    src = Path(root) / "csrc" / "selective_scan"
    sources = [src / "selective_scan.cpp"] + [src / f"selective_scan_fwd_{t}.cu" for t in ("fp32", "fp16", "bf16")]
    flags = sys.getdlopenflags()
    sys.setdlopenflags(os.RTLD_LAZY | os.RTLD_LOCAL)  # the backward entry points stay unresolved
    try:
        module = _build("mamba", "--mamba-cuda", "mamba_selective_scan_fwd", sources, MAMBA_FLAGS, log,
                        extra_cflags=["-O3", "-std=c++17"], extra_include_paths=[str(src)])
    finally:
        sys.setdlopenflags(flags)

    def run(kw):
        u, delta, z = kw["u"], kw["delta"], kw.get("z")
        B, C = (kw[n].to(u.dtype)[:, None] for n in ("B", "C"))  # (batch, 1 group, N, L)
        D, bias = (None if kw.get(n) is None else kw[n].float() for n in ("D", "delta_bias"))
        out = module.fwd(u, delta, kw["A"].float(), B, C, D, z, bias, bool(kw.get("delta_softplus")))
        return out[2] if z is not None else out[0]

    return {"selective_scan": ("mamba selective_scan_cuda.fwd", run)}


def load_rwkv_kernels(root: str, log, dtype) -> dict:
    """{op: (label, run(kwargs) -> y)} for the RWKV-LM kernels that take inputs of `dtype`."""
    import torch

    root = Path(root)
    kernels = {}
    fp32 = dtype == torch.float32
    cuda7 = root / "RWKV-v7" / "train_temp" / "cuda"
    suffix = "_fp32" if fp32 else ""
    _build("RWKV-LM", "--rwkv-cuda", f"rwkvlm_wkv7{suffix}",
           [cuda7 / f"wkv7_op{suffix}.cpp", cuda7 / f"wkv7_cuda{suffix}.cu"], FLAGS + ["-D_C_=64", "-D_CHUNK_LEN_=16"],
           log, is_python_module=False)

    def wkv7(kw):
        r, w, k, v, a, b = (kw[n].contiguous() for n in ("r", "w", "k", "v", "a", "b"))
        B, T, H, N = r.shape
        if N != 64 or T % 16:
            raise ValueError("RWKV-LM's WKV-7 kernel needs head size 64 and T a multiple of 16")
        y = torch.empty_like(v)
        s = torch.empty(B, H, T // 16, N, N, dtype=torch.float32, device=r.device)
        sa = torch.empty(B, T, H, N, dtype=torch.float32, device=r.device)
        torch.ops.wind_backstepping.forward(w, r, k, v, a, b, y, s, sa)
        return y

    kernels["wkv7"] = (f"RWKV-LM wind_backstepping ({'fp32' if fp32 else 'bf16'})", wkv7)
    if not fp32:
        cuda6 = root / "RWKV-v5" / "cuda"
        _build("RWKV-LM", "--rwkv-cuda", "rwkvlm_wkv6", [cuda6 / "wkv6_op.cpp", cuda6 / "wkv6_cuda.cu"],
               FLAGS + ["-D_N_=64", "-D_T_=512"], log, is_python_module=False)

        def wkv6(kw):
            r, k, v, w = (kw[n].contiguous() for n in ("r", "k", "v", "w"))
            B, T, H, N = r.shape
            y = torch.empty_like(v)
            torch.ops.wkv6.forward(B, T, H * N, H, r, k, v, w, kw["u"].to(torch.bfloat16).contiguous(), y)
            return y

        kernels["wkv6"] = ("RWKV-LM wkv6 (bf16)", wkv6)
    return kernels
