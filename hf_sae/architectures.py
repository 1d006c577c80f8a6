"""The SAE architectures as one table, chosen once when an `SaeModel` is built (as transformers picks `ACT2FN[...]`).

Every architecture shares W_enc, b_enc, W_dec and b_dec; an entry says what else it has and how it differs:

    pre = (x - b_dec) @ W_enc.T + b_enc        (b_dec subtracted when `apply_b_dec_to_input`)
    z   = activation(pre), or a sparse selection of pre (the k family, see sparse_ops)
    x̂   = z @ W_dec + b_dec
    loss = ||x - x̂||² + penalty(z, pre)         (+ AuxK for the k family)

The functions take the `SaeModel` as their first argument; this module never imports it.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from .sparse_ops import Select, SparseCode, select_batch_topk, select_topk

# Exponential moving average decay of the BatchTopK inference threshold (as in dictionary_learning's trainer).
BATCHTOPK_THRESHOLD_DECAY = 0.99


@dataclass(frozen=True)
class ExtraTensor:
    """A tensor beyond W_enc, b_enc, W_dec and b_dec: per latent `(num_latents,)` or one scalar `()`; a parameter
    or a buffer; initialised to a number, or to the config field that `init` names."""

    name: str
    per_latent: bool = True
    trainable: bool = True
    init: float | str = 0.0


@dataclass(frozen=True)
class Architecture:
    """One row of the table. `select` makes the sparse selection from `k` for the k family (`None`: dense);
    `activation` gives (z, pre) densely; `penalty(sae, x, z, pre, coefficient)` gives (sparsity, auxiliary) losses
    of the dense path; `after_sparse_step(sae, code)` runs on each training batch's sparse code."""

    name: str
    reference: str
    uses_k: bool = False
    select: Callable[[int], Select] | None = None
    sparse_at_inference: bool = True
    activation: Callable[[Any, Tensor], tuple[Tensor, Tensor]] | None = None
    penalty: Callable[..., tuple[Tensor | None, Tensor | None]] | None = None
    after_sparse_step: Callable[[Any, SparseCode], None] | None = None
    extra_tensors: tuple[ExtraTensor, ...] = ()
    unit_norm_decoder: bool = True
    decoder_init_norm: float = 1.0


# ---- dense activations ----------------------------------------------------------------------------------------------


def _relu(sae, x: Tensor) -> tuple[Tensor, Tensor]:
    pre = sae.pre_activation(x)  # (N, num_latents)
    return pre.relu(), pre


def _jumprelu(sae, x: Tensor) -> tuple[Tensor, Tensor]:
    pre = sae.pre_activation(x)
    return JumpReLU.apply(pre, sae.threshold.to(pre.dtype), sae.config.jumprelu_bandwidth), pre


def _batchtopk_inference(sae, x: Tensor) -> tuple[Tensor, Tensor]:
    pre = sae.pre_activation(x)
    return pre.relu() * (pre > sae.threshold.to(pre.dtype)), pre


def _gated(sae, x: Tensor) -> tuple[Tensor, Tensor]:
    """The gate uses W_enc with bias b_enc; the magnitude uses W_enc * exp(r_mag) with bias b_mag."""
    x_enc = sae.encoder_input(x)
    pre = torch.addmm(sae.b_enc.to(x.dtype), x_enc, sae.W_enc.to(x.dtype).T)  # the gate
    magnitude_weight = sae.W_enc * sae.r_mag.exp()[:, None]
    magnitude = torch.addmm(sae.b_mag.to(x.dtype), x_enc, magnitude_weight.to(x.dtype).T)
    return (pre > 0).to(x.dtype) * magnitude.relu(), pre


# ---- penalties ------------------------------------------------------------------------------------------------------


def _decoder_norms(sae, dtype: torch.dtype) -> Tensor:
    return sae.W_dec.norm(dim=-1).to(dtype)  # (num_latents,)


def _l1_penalty(sae, x: Tensor, z: Tensor, pre: Tensor, coefficient: float):
    """L1 weighted by decoder norms: Anthropic, "Circuits Updates - April 2024"."""
    return coefficient * (z.abs() * _decoder_norms(sae, z.dtype)).sum(-1).mean(), None


def _l0_penalty(sae, x: Tensor, z: Tensor, pre: Tensor, coefficient: float):
    """L0 through the step function's pseudo-gradient (Rajamanoharan et al. 2024, eq. 10)."""
    step = Step.apply(pre, sae.threshold.to(pre.dtype), sae.config.jumprelu_bandwidth)
    return coefficient * step.sum(-1).mean(), None


def _gated_penalty(sae, x: Tensor, z: Tensor, pre: Tensor, coefficient: float):
    """L1 on the gate's ReLU, and the gate alone must reconstruct x through a frozen decoder (their eq. 8)."""
    gate = pre.relu()
    sparsity = coefficient * (gate * _decoder_norms(sae, z.dtype).detach()).sum(-1).mean()
    via_gate = gate @ sae.W_dec.detach().to(gate.dtype) + sae.b_dec.detach().to(gate.dtype)
    return sparsity, (via_gate - x).pow(2).sum(-1).mean()


@torch.no_grad()
def _track_batchtopk_threshold(sae, code: SparseCode) -> None:
    """The inference threshold tracks the smallest activation BatchTopK kept (Bussmann et al. 2024, sec. 3)."""
    positive = code.values[code.values > 0]
    if positive.numel() == 0:
        return
    smallest = positive.min().to(sae.threshold.dtype)
    if sae.threshold < 0:
        sae.threshold.copy_(smallest)
    else:
        sae.threshold.lerp_(smallest, 1 - BATCHTOPK_THRESHOLD_DECAY)


# ---- the table ------------------------------------------------------------------------------------------------------

ARCHITECTURES: dict[str, Architecture] = {
    arch.name: arch
    for arch in (
        # ReLU SAEs start with short decoder rows (0.1) because their penalty scales with the norms.
        Architecture(
            "relu",
            "Anthropic, Circuits Updates, April 2024",
            activation=_relu,
            penalty=_l1_penalty,
            unit_norm_decoder=False,
            decoder_init_norm=0.1,
        ),
        Architecture("topk", "Gao et al. 2024", uses_k=True, select=select_topk),
        Architecture(
            "batchtopk",
            "Bussmann et al. 2024",
            uses_k=True,
            select=select_batch_topk,
            sparse_at_inference=False,
            activation=_batchtopk_inference,
            after_sparse_step=_track_batchtopk_threshold,
            # () global inference threshold, learned by EMA; -1 means unset until the first training batch
            extra_tensors=(ExtraTensor("threshold", per_latent=False, trainable=False, init=-1.0),),
        ),
        Architecture(
            "jumprelu",
            "Rajamanoharan et al. 2024, Jumping Ahead",
            activation=_jumprelu,
            penalty=_l0_penalty,
            extra_tensors=(ExtraTensor("threshold", init="jumprelu_init_threshold"),),
        ),
        Architecture(
            "gated",
            "Rajamanoharan et al. 2024, Improving Dictionary Learning with Gated SAEs",
            activation=_gated,
            penalty=_gated_penalty,
            extra_tensors=(ExtraTensor("r_mag"), ExtraTensor("b_mag")),
        ),
    )
}
ArchitectureName = Literal[tuple(ARCHITECTURES)]  # for argument parsers: `--help` lists the choices


# ---- straight-through pieces for JumpReLU (Rajamanoharan et al. 2024, "Jumping Ahead") ------------------------------


def _rectangle(u: Tensor) -> Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class JumpReLU(torch.autograd.Function):
    """z = pre * H(pre - θ), with d/dθ = -(θ / bandwidth) * rectangle((pre - θ) / bandwidth)."""

    @staticmethod
    def forward(ctx, pre: Tensor, threshold: Tensor, bandwidth: float):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        pre, threshold = ctx.saved_tensors
        grad_pre = grad_out * (pre > threshold)
        kernel = _rectangle((pre - threshold) / ctx.bandwidth)
        grad_threshold = -(threshold / ctx.bandwidth) * kernel * grad_out
        return grad_pre, grad_threshold.reshape(-1, threshold.shape[-1]).sum(0), None


class Step(torch.autograd.Function):
    """H(pre - θ) for the L0 penalty, with d/dθ = -(1 / bandwidth) * rectangle((pre - θ) / bandwidth)."""

    @staticmethod
    def forward(ctx, pre: Tensor, threshold: Tensor, bandwidth: float):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        pre, threshold = ctx.saved_tensors
        grad_threshold = -(1.0 / ctx.bandwidth) * _rectangle((pre - threshold) / ctx.bandwidth) * grad_out
        return None, grad_threshold.reshape(-1, threshold.shape[-1]).sum(0), None
