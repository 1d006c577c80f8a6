"""The bf16 probe against what the CPU itself advertises."""

from pathlib import Path

import pytest

from hf_sae.precision import bf16_is_faster


def _cpu_flags() -> set[str]:
    info = Path("/proc/cpuinfo")
    if not info.exists():
        pytest.skip("no /proc/cpuinfo to read the CPU's instruction sets from")
    return {flag for line in info.read_text().splitlines() if line.startswith("flags") for flag in line.split()}


def test_a_cpu_without_bf16_instructions_is_measured_as_not_faster_in_bf16():
    flags = _cpu_flags()
    if flags & {"avx512_bf16", "amx_bf16"}:
        pytest.skip("this CPU multiplies bf16 natively")
    bf16_is_faster.cache_clear()
    assert bf16_is_faster("cpu") is False


def test_devices_other_than_cpu_and_cuda_are_never_bf16_faster():
    assert bf16_is_faster("mps") is False
