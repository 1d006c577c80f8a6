"""Hookpoints spread over processes (after EleutherAI sparsify's `distribute_modules`): with many hookpoints or very
wide SAEs, each rank owns the SAEs of some hookpoints. Every rank runs the LM on its own shard of the text and sends
each hookpoint's activations to the rank that owns it, so an owner trains on the whole global batch of its
hookpoints and memory per rank is the SAEs it owns. Owned SAEs are not DDP-wrapped and need no gradient all-reduce:
their data is already global.

The trade against data parallelism (docs/scaling.md): per step this moves `(N - 1) / N * tokens * d_in` activation
values per hookpoint instead of all-reducing `2 * num_latents * d_in` gradient values per SAE.

    local_launch       the torchrun command that starts N processes on this machine
    hookpoint_owners   which rank owns which hookpoint
    send_to_owners     one micro-batch's activations, to their owners
    gather_to_main     every rank's value, on rank 0
"""

import sys
from collections.abc import Sequence

import torch
import torch.distributed as dist

from .errors import ArgumentError


def local_launch(processes: int) -> list[str]:
    """torchrun starting `processes` processes on this machine. `--standalone` picks a free port, so two runs side by
    side do not collide; the loopback address replaces torchrun's default, the hostname, which need not resolve to
    this machine (the processes would then wait for each other forever)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--local_addr", "127.0.0.1",
            "--nproc_per_node", str(processes)]  # fmt: skip


def hookpoint_owners(hookpoints: Sequence[str], world_size: int) -> dict[str, int]:
    """`{hookpoint: rank}`, round robin in the order given; every rank must own at least one hookpoint."""
    if len(hookpoints) < world_size:
        raise ArgumentError(
            f"--distribute_hookpoints gives each of the {world_size} processes the SAEs of some hookpoints, but there "
            f"are only {len(hookpoints)} ({list(hookpoints)}). Name at least {world_size} hookpoints, use fewer "
            "processes, or drop --distribute_hookpoints (data parallelism)."
        )
    return {hookpoint: index % world_size for index, hookpoint in enumerate(hookpoints)}


def send_to_owners(batch: dict[str, torch.Tensor], owners: dict[str, int], rank: int) -> dict[str, torch.Tensor]:
    """Exchange one micro-batch: each rank holds `(n, d_in)` of every hookpoint, the same `n` on every rank; each
    owner receives its hookpoints' `(world * n, d_in)`, rank 0's rows first. A `gather` per hookpoint (gloo and NCCL
    both have it) rather than one all-to-all, whose list form needs equal shapes across hookpoints on gloo."""
    world = dist.get_world_size()
    received = {}
    for hookpoint, owner in owners.items():  # the same order on every rank
        local = batch[hookpoint].contiguous()
        parts = [torch.empty_like(local) for _ in range(world)] if rank == owner else None
        dist.gather(local, parts, dst=owner)
        if rank == owner:
            received[hookpoint] = torch.cat(parts)
    return received


def gather_to_main(value):
    """Every rank's `value` (a picklable object, e.g. state dicts on the CPU) as a list on rank 0, `None` elsewhere.
    Only trusted values from this run's own processes travel this way, never anything read from a file."""
    gathered = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(value, gathered, dst=0)
    return gathered
