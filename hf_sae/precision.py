"""Which dtype where, and the default device: one vocabulary of dtype names for every argument that takes one.

The names: torch's (`bfloat16`, `float16`, `float32`, also spelled `torch.bfloat16`) and accelerate's short ones
(`bf16`, `fp16`, `fp32`, `no` for full precision). The LM forward and the SAE step run in bf16 autocast by default
only where this machine multiplies bf16 clearly faster than fp32 (`bf16_is_faster`).
"""

import functools
import time
from typing import Literal, get_args

import torch

from .errors import ArgumentError

LmDtype = Literal["auto", "bfloat16", "float16", "float32"]  # `--lm_dtype`
CacheDtype = Literal["bfloat16", "float16"]  # `--cache_dtype`: what an activation cache stores
MixedPrecision = Literal["auto", "no", "bf16", "fp16"]  # `--mixed_precision`, in accelerate's words

# Every dtype name hf_sae takes; None is full precision (fp32), where autocast is off.
DTYPES: dict[str, torch.dtype | None] = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "float64": torch.float64,
    "no": None,
}


def default_device() -> str:
    """Where work goes when nobody says: the GPU where there is one, else the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def as_torch_dtype(dtype: torch.dtype | str | None, flag: str = "dtype") -> torch.dtype | None:
    """A dtype argument as a floating `torch.dtype`: a dtype, or one of `DTYPES`' names; None or `"auto"` (keep
    what there is) and `"no"` give None."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return None
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise ArgumentError(
            f"`{flag}` must be a floating torch dtype or its name (one of {list(DTYPES)}); got {dtype!r}, e.g. "
            f"`{flag}='bfloat16'`."
        )
    return DTYPES[name]


@functools.cache
def bf16_is_faster(device_type: str) -> bool:
    """Whether this machine multiplies bf16 matrices clearly faster than fp32 (measured once, well under a second
    where bf16 is fast; where it is emulated, the first bf16 product alone settles it)."""
    if device_type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device_type != "cpu":
        return False

    def seconds(a: torch.Tensor, b: torch.Tensor, repeats: int) -> float:
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        return time.perf_counter() - start

    a, b = torch.randn(256, 1024), torch.randn(1024, 512)
    seconds(a, b, 1)  # warm-up
    fp32 = seconds(a, b, 3)
    a, b = a.bfloat16(), b.bfloat16()
    if seconds(a, b, 1) > 3 * fp32:  # one bf16 product (its warm-up too) slower than nine fp32 ones: emulated
        return False
    return seconds(a, b, 3) * 1.5 < fp32


def resolve_lm_dtype(lm_dtype: LmDtype, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype for the LM forward, `None` for fp32: `auto` picks bf16 where the hardware is faster."""
    if lm_dtype == "auto":
        return torch.bfloat16 if bf16_is_faster(torch.device(device).type) else None
    if lm_dtype not in ("bfloat16", "float16", "float32"):
        raise ArgumentError(f"`lm_dtype` must be one of auto, bfloat16, float16, float32; got {lm_dtype!r}.")
    dtype = as_torch_dtype(lm_dtype, "lm_dtype")
    return None if dtype == torch.float32 else dtype


def resolve_mixed_precision(mixed_precision: MixedPrecision | None) -> str | None:
    """accelerate's `mixed_precision` for the SAE step: `auto` is bf16 autocast where this machine multiplies bf16
    faster (as for the LM), else `no` (fp32); None leaves it to accelerate's own setting."""
    if mixed_precision != "auto":
        return mixed_precision
    return "bf16" if bf16_is_faster(default_device()) else "no"


def cache_dtype(name: CacheDtype) -> torch.dtype:
    """The dtype an activation cache stores, from its name (`bfloat16` or `float16`)."""
    if name not in get_args(CacheDtype):
        raise ArgumentError(f"--cache_dtype must be one of {list(get_args(CacheDtype))}; got {name!r}.")
    return DTYPES[name]
