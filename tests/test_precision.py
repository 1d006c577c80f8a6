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


def test_the_probe_answers_by_its_timings(monkeypatch):
    """With a clock on which each bf16 product takes a third of an fp32 one, bf16 is faster; at equal cost it is
    not; and an emulated bf16 (its first product slower than nine fp32 ones) is settled without timing more."""
    import hf_sae.precision as precision

    def clock(fp32: float, bf16: float, first_bf16: float):
        # perf_counter pairs: warm-up, three fp32 products, the first bf16 product, then three bf16 products
        durations = iter([fp32, 3 * fp32, first_bf16, 3 * bf16])
        now = [0.0]

        def perf_counter():
            now[0] += next(durations) if len(calls) % 2 else 0.0
            calls.append(now[0])
            return now[0]

        calls: list[float] = []
        return perf_counter, calls

    for (fp32, bf16, first), expected, reads in [
        ((1.0, 1 / 3, 1 / 3), True, 8),
        ((1.0, 1.0, 1.0), False, 8),
        ((1.0, 1.0, 10.0), False, 6),
    ]:
        perf_counter, calls = clock(fp32, bf16, first)
        monkeypatch.setattr(precision.time, "perf_counter", perf_counter)
        bf16_is_faster.cache_clear()
        assert bf16_is_faster("cpu") is expected
        assert len(calls) == reads  # the emulated case stops after the first bf16 product
    bf16_is_faster.cache_clear()
