"""`keep_freed_memory`: a large block freed by one training step is reused by the next instead of being faulted in
page by page again (glibc on Linux; elsewhere the call does nothing and says so)."""

import os
import subprocess
import sys

import pytest

from hf_sae.cpu_memory import VARIABLE, keep_freed_memory

# Allocate, fill and free a 64 MiB tensor four times, as training steps do; print the page faults of the last time.
# (The heap holds a free block of the right size and alignment from the third time on.)
LAST_ALLOCATION_FAULTS = """
import resource, sys, torch
from hf_sae.cpu_memory import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
for _ in range(4):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(16 * 2**20).fill_(1.0)
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None, reason="glibc's malloc only"
)


def last_allocation_faults(mode: str, **env) -> tuple[str, int]:
    done = subprocess.run([sys.executable, "-c", LAST_ALLOCATION_FAULTS, mode], capture_output=True, text=True,
                          env={**os.environ, **env}, check=True)  # fmt: skip
    applied, faults = done.stdout.split()
    return applied, int(faults)


@pytest.fixture(scope="module")
def default_faults() -> int:
    """Page faults of the 4th allocation under glibc's defaults: the block was unmapped on free and faults in again
    (one fault per 4 KiB page, or per 2 MiB page where transparent huge pages are always on)."""
    applied, faults = last_allocation_faults("default")
    assert applied == "False" and faults > 0  # the cost that keep_freed_memory removes is really there
    return faults


@glibc
def test_a_freed_block_is_reused_without_page_faults(default_faults):
    applied, faults = last_allocation_faults("keep")
    assert applied == "True"
    assert faults <= default_faults // 10  # the block came back from the heap, already mapped


@glibc
def test_the_variable_turns_it_off(default_faults):
    applied, faults = last_allocation_faults("keep", **{VARIABLE: "0"})
    assert applied == "False" and faults >= default_faults // 2


def test_off_linux_it_does_nothing(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert keep_freed_memory() is False
