"""Whether SAEs fit in memory to train: refused before allocating, with the size they need and the size there is."""

import psutil  # an accelerate dependency; portable where os.sysconf is not (Windows)
import torch

from .errors import ArgumentError

# Bytes per latent per input dimension while training in fp32: weight, gradient and Adam's two moments, for the
# encoder and the decoder.
TRAINING_BYTES_PER_WEIGHT = 4 * 4 * 2


def memory_bytes(device: str | None = None) -> int:
    """The memory of `device` (a GPU's, else this machine's RAM), what an SAE has to fit in."""
    if device is not None and str(device).startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_properties(torch.device(device)).total_memory
    return psutil.virtual_memory().total


def check_fits_in_memory(num_latents: int, d_in: int, count: int = 1, device: str | None = None) -> None:
    """Refuse SAEs whose training state would not fit in memory, before trying to allocate it."""
    need, have = count * num_latents * d_in * TRAINING_BYTES_PER_WEIGHT, memory_bytes(device)
    if need > have:
        raise ArgumentError(
            f"--num_latents {num_latents:,} (d_in {d_in}, {count} SAE(s)) needs about {need / 2**30:,.1f} GiB to "
            f"train, more than the {have / 2**30:,.1f} GiB of memory here. Lower --num_latents or "
            "--expansion_factor, or train fewer hookpoints per process (--distribute_hookpoints)."
        )
