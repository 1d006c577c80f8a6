"""What every format reader shares: `Found` (what a folder holds, from its small files) and the tensor helpers that
check shapes, read safetensors and fold scales so that a converted SAE takes raw activations; `non_finite`, the one
test for NaN or inf weights, which loading and checkpoints apply."""

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from ..configuration_sae import SaeConfig
from ..errors import SaeConfigError, WeightsError


class Found(NamedTuple):
    """What a folder holds, read from its small files only: for choosing among many SAEs before downloading."""

    format: str
    hookpoint: str | None
    num_latents: int | None
    l0: float | None = None


# ---- helpers --------------------------------------------------------------------------------------------------------


def take(tensors: dict[str, Tensor], name: str, shape: tuple[int, ...], source: Path, *aliases: str) -> Tensor:
    """`tensors[name]` (or the first alias present) as float32, checked against `shape`."""
    key = next((k for k in (name, *aliases) if k in tensors), None)
    if key is None:
        raise WeightsError(
            f"{source} lacks tensor {name!r} (shape {shape}); it has {sorted(tensors)}. The file is incomplete or "
            "was saved for another architecture."
        )
    tensor = tensors[key]
    if tuple(tensor.shape) != shape:
        raise WeightsError(
            f"Tensor {key!r} in {source} has shape {tuple(tensor.shape)}, but its config says {shape}. The weights "
            "and config do not belong together."
        )
    return tensor.detach().to(torch.float32)


def refuse(source: Path, field: str, value: Any, why: str) -> SaeConfigError:
    return SaeConfigError(f"{source} sets {field}={value!r}, which hf_sae cannot represent: {why}")


def load_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(path)
    except (SafetensorError, OSError) as error:
        raise WeightsError(
            f"{path} is not a readable safetensors file ({error}). Download or save it again."
        ) from None


def load_torch_file(path: Path) -> dict[str, Tensor]:
    """A torch file (dictionary_learning's ae.pt, the `.pt` SAEs of some releases) through
    `torch.load(weights_only=True)`: a dict of tensors only, never code."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise WeightsError(
            f"{path} is not a plain state dict that can be read without running code ({reason}). hf_sae reads "
            "torch files only with torch.load(weights_only=True); save `{name: tensor}` with torch.save instead."
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise WeightsError(f"{path} should hold a state dict of tensors; got {type(state).__name__}.")
    return state


def non_finite(tensors: Mapping[str, Tensor]) -> str | None:
    """The first floating-point tensor of `tensors` that holds NaN or inf, named with how many, or None. Checked in
    slices, so that a large tensor needs no mask of its own size."""
    for name, tensor in tensors.items():
        if not tensor.is_floating_point():
            continue
        bad = sum(int((~torch.isfinite(part)).sum()) for part in tensor.detach().reshape(-1).split(1 << 24))
        if bad:
            return f"{name!r} ({bad:,} of {tensor.numel():,} values NaN or inf)"
    return None


def nonnegative(threshold: Tensor) -> Tensor:
    """SAELens, Gemma Scope and dictionary_learning compute relu(pre) * (pre > θ); hf_sae's JumpReLU is
    pre * (pre > θ). The two agree for every pre once θ is raised to at least 0."""
    return threshold.clamp_min(0)


def fold_decoder_norms(t: dict[str, Tensor]) -> None:
    """Latents scaled by decoder row norms (SAELens' `rescale_acts_by_decoder_norm`) folded into the weights."""
    norms = t["W_dec"].norm(dim=-1).clamp_min(1e-8)
    t["W_enc"] = t["W_enc"] * norms[:, None]
    t["b_enc"] = t["b_enc"] * norms
    t["W_dec"] = t["W_dec"] / norms[:, None]


def fold_input_scale(t: dict[str, Tensor], scale: float, output_scale: float | None = None) -> None:
    """An SAE that reads `scale * x` (and predicts `output_scale * y`, by default `scale * y`) made to read x and
    predict y (as `SaeModel.fold_activation_scale_`)."""
    output_scale = scale if output_scale is None else output_scale
    t["W_enc"], t["W_dec"], t["b_dec"] = t["W_enc"] * scale, t["W_dec"] / output_scale, t["b_dec"] / output_scale


def config_of(d_in: int, num_latents: int, architecture: str, **fields) -> SaeConfig:
    return SaeConfig(d_in=d_in, num_latents=num_latents, architecture=architecture, **fields)
