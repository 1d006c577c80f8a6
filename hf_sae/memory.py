"""Whether SAEs and cross-layer transcoders fit in memory to train: refused before allocating (and before the LM
loads), with the size they need, the size there is, and what to change. One rule serves both (docs/scaling.md,
"Cross-layer transcoders"): training holds `TRAINING_BYTES_PER_WEIGHT` bytes per weight.

    training_bytes          the rule: bytes to train this many weights
    sae_weights             an SAE's weights on one process: encoder and decoder, `2 n d`, or with feature shards its
                            rows of them, `2 ceil(n / S) d`
    clt_weights             a cross-layer transcoder's: `L F d_in` encoders, `F d_out L (L + 1) / 2` decoders (with
                            feature shards, `ceil(F / S)` latents of every layer in place of F)
    check_fits_in_memory    SAEs, refused when they cannot fit
    check_clt_fits_in_memory
"""

import psutil  # an accelerate dependency; portable where os.sysconf is not (Windows)
import torch

from .errors import ArgumentError

# Bytes per weight while training in fp32: the weight, its gradient and Adam's two moments.
TRAINING_BYTES_PER_WEIGHT = 4 * 4


def memory_bytes(device: str | None = None) -> int:
    """The memory of `device` (a GPU's, else this machine's RAM), what an SAE has to fit in."""
    if device is not None and str(device).startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_properties(torch.device(device)).total_memory
    return psutil.virtual_memory().total


def training_bytes(num_weights: int) -> int:
    """Bytes to train `num_weights` fp32 weights with Adam (the biases, a rounding error, are not counted)."""
    return num_weights * TRAINING_BYTES_PER_WEIGHT


def sae_weights(num_latents: int, d_in: int, shards: int = 1) -> int:
    """An SAE's encoder and decoder on one process: `2 n d`; split over `shards` feature shards, each process holds
    its rows of both, `2 ceil(n / S) d` (what every shard holds whole, b_dec, is a bias and not counted)."""
    return 2 * -(-num_latents // shards) * d_in


def clt_weights(n_layers: int, num_latents: int, d_in: int, d_out: int | None = None, shards: int = 1) -> int:
    """A cross-layer transcoder's encoders (`L F d_in`) and decoders from every layer into every later one
    (`F d_out L (L + 1) / 2`): the decoders grow with the square of the layer count. Split over `shards` feature
    shards, one process holds `ceil(F / S)` latents of every layer."""
    d_out, num_latents = d_in if d_out is None else d_out, -(-num_latents // shards)
    return n_layers * num_latents * d_in + num_latents * d_out * n_layers * (n_layers + 1) // 2


def check_fits_in_memory(num_latents: int, d_in: int, count: int = 1, device: str | None = None,
                         shards: int = 1) -> None:  # fmt: skip
    """Refuse SAEs whose training state would not fit in memory, before trying to allocate it; with `shards` feature
    shards, what one process holds: its rows of each SAE."""
    split = f", each split over {shards} feature shards: {-(-num_latents // shards):,} latent rows per process"
    _refuse_above(
        training_bytes(count * sae_weights(num_latents, d_in, shards)), device,
        f"--num_latents {num_latents:,} (d_in {d_in}, {count} SAE(s){split if shards > 1 else ''})",
        "Lower --num_latents or --expansion_factor, train fewer hookpoints per process (--distribute_hookpoints), or "
        "split each SAE's latents over more processes (--shard_features).",
    )  # fmt: skip


def check_clt_fits_in_memory(n_layers: int, num_latents: int, d_in: int, d_out: int | None = None,
                             device: str | None = None, extra_bytes: int = 0, shards: int = 1) -> None:  # fmt: skip
    """Refuse a cross-layer transcoder whose training state (plus `extra_bytes`, e.g. the shuffling buffer's
    activations) would not fit in memory, before trying to allocate it; with `shards` feature shards, what one
    process holds: its latents of every layer."""
    weights = clt_weights(n_layers, num_latents, d_in, d_out, shards)
    buffer = f" and {extra_bytes / 2**30:,.1f} GiB of buffered activations" if extra_bytes else ""
    split = f" split over {shards} feature shards, {-(-num_latents // shards):,} latents per layer on each process"
    _refuse_above(
        training_bytes(weights) + extra_bytes, device,
        f"A cross-layer transcoder of {n_layers} layers x {num_latents:,} latents{split if shards > 1 else ''} "
        f"(d_in {d_in}: {weights:,} weights{' per process' if shards > 1 else ''}, {TRAINING_BYTES_PER_WEIGHT} bytes "
        f"each to train{buffer})",
        "Lower --num_latents or --expansion_factor (memory grows with it), span fewer layers with --clt_layers "
        "(the decoders grow with the square of the layer count), lower --shuffle_buffer_tokens, or split the latents "
        "over more processes (--shard_features).",
    )  # fmt: skip


def _refuse_above(need: int, device: str | None, what: str, fix: str) -> None:
    have = memory_bytes(device)
    if need > have:
        raise ArgumentError(
            f"{what} needs about {need / 2**30:,.1f} GiB ({need:,} bytes) to train, more than the "
            f"{have / 2**30:,.1f} GiB ({have:,} bytes) of memory here. {fix}"
        )
