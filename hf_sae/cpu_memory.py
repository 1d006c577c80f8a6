"""Reuse freed CPU memory for the next training step instead of faulting it in again.

glibc's malloc serves every block above its mmap threshold (which it raises to 32 MiB at most) with a fresh mapping
and unmaps it on free, so each step's large tensors, above all the (batch, num_latents) pre-activations (151 MB at
4,096 x 9,216), page-fault and zero every 4 KiB page again: on 2 cores that costs a quarter of the encoder matmul's
time (`scripts/benchmark.py` measures it). Raising the mmap and trim thresholds keeps such blocks in the heap, where
the next step finds them; jemalloc or tcmalloc by LD_PRELOAD do the same, as PyTorch's CPU tuning guide suggests.
The price: freed memory below the trim threshold is not handed back to the system while the process runs.
"""

import ctypes
import ctypes.util
import os
import sys

# Set to 0 to keep glibc's defaults.
VARIABLE = "HF_SAE_KEEP_FREED_MEMORY"
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from glibc's malloc.h
# Blocks of at least 1 GiB still get their own mapping; up to 1 GiB free at the heap's top is kept for reuse.
_THRESHOLD = 1 << 30


def keep_freed_memory() -> bool:
    """Have glibc keep blocks up to 1 GiB in the heap after they are freed (see the module docstring). True when
    applied; False off glibc (macOS, Windows, musl) or with HF_SAE_KEEP_FREED_MEMORY=0. Idempotent."""
    if not sys.platform.startswith("linux") or os.environ.get(VARIABLE, "1") == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _THRESHOLD))
