"""The SAE architectures as one table, chosen once when an `SaeModel` is built (as transformers picks `ACT2FN[...]`).

Every architecture shares W_enc, b_enc, W_dec and b_dec; an entry says what else it has and how it differs:

    pre = (x - b_dec) @ W_enc.T + b_enc        (b_dec subtracted when `apply_b_dec_to_input`), one dense matmul
    kept = select(pre)                         the entries the step touches: top k, pre > 0, pre near or above θ
    z   = activate(kept)                       on those entries only
    x̂   = z @ W_dec + b_dec                    a sparse decode (sparse_ops); Matryoshka: every nested prefix's x̂
    loss = ||x - x̂||² + penalty(kept, z)       (+ AuxK for the k family)

After the encoder matmul every computation of a training step, backward included, involves only the kept entries
(the approach of Gao et al. 2024 for TopK, applied here to every architecture). The functions take the `SaeModel` as
their first argument; this module never imports it.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass
from itertools import accumulate
from typing import Any, Literal

import torch
from torch import Tensor

from .errors import SaeConfigError
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
    in_latent_units: bool = False  # scales with the latent when decoder norms are folded (a threshold, a bias)


@dataclass(frozen=True)
class Architecture:
    """One row of the table. Every architecture trains on a sparse code (`sparse_ops`): `select(sae)` says which
    pre-activation entries the step touches, `activate(sae, pre)` turns those entries into the latents z (the same
    entries, some of them possibly 0), `penalty(sae, x, pre, z, coefficient)` gives the losses beyond the
    reconstruction's by name, and `reconstruct(sae, x, z, with_loss)` gives (x̂, {name: loss}) where the decoder
    is more than `z @ W_dec + b_dec`. `dense_inference(sae, x)` gives z at inference where that differs from
    training (BatchTopK's threshold); `after_sparse_step(sae, z)` runs on each training batch's code."""

    name: str
    reference: str
    select: Callable[[Any], Select]
    activate: Callable[[Any, SparseCode], SparseCode] = lambda sae, pre: pre._replace(values=pre.values.relu())
    penalty: Callable[..., dict[str, Tensor]] | None = None
    reconstruct: Callable[..., tuple[Tensor, dict[str, Tensor]]] | None = None
    uses_k: bool = False
    dense_inference: Callable[[Any, Tensor], Tensor] | None = None
    after_sparse_step: Callable[[Any, SparseCode], None] | None = None
    extra_tensors: tuple[ExtraTensor, ...] = ()
    unit_norm_decoder: bool = True
    decoder_init_norm: float = 1.0


# ---- what a training step touches: the entries each architecture keeps ---------------------------------------------


def _positive(pre: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    rows, cols = (pre > 0).nonzero(as_tuple=True)  # row-major, so grouped by token
    return rows, cols, pre[rows, cols]


def _jumprelu_support(sae) -> Select:
    """Entries above the threshold, and those below it within the bandwidth of the straight-through kernel: the
    only ones whose value or threshold gradient is not 0."""
    bandwidth = sae.config.jumprelu_bandwidth

    def select(pre: Tensor):
        rows, cols = ((pre - sae.threshold.to(pre.dtype)) / bandwidth > -0.5).nonzero(as_tuple=True)
        return rows, cols, pre[rows, cols]

    return select


# ---- from the kept pre-activations to the latents -------------------------------------------------------------------


def _identity(sae, pre: SparseCode) -> SparseCode:
    return pre


def _jumprelu(sae, pre: SparseCode) -> SparseCode:
    threshold = sae.threshold.to(pre.values.dtype)
    return pre._replace(values=JumpReLU.apply(pre.values, pre.cols, threshold, sae.config.jumprelu_bandwidth))


def _gated_magnitude(sae, pre: SparseCode) -> SparseCode:
    """Where the gate (W_enc, b_enc) is open, z = relu of the magnitude path, whose weights are W_enc * exp(r_mag)
    with bias b_mag: exp(r_mag) * (gate - b_enc) + b_mag on the same entries, with no second matmul."""
    dtype, cols = pre.values.dtype, pre.cols
    scale, b_enc, b_mag = (sae.r_mag.exp().to(dtype), sae.b_enc.to(dtype), sae.b_mag.to(dtype))
    magnitude = scale[cols] * (pre.values - b_enc[cols]) + b_mag[cols]
    return pre._replace(values=magnitude.relu())


def _batchtopk_inference(sae, x: Tensor) -> Tensor:
    pre = sae.pre_activation(x)
    return pre.relu() * (pre > sae.threshold.to(pre.dtype))


# ---- penalties, on the kept entries ---------------------------------------------------------------------------------


def _decoder_norms(sae, dtype: torch.dtype) -> Tensor:
    return sae.W_dec.norm(dim=-1).to(dtype)  # (num_latents,)


def _per_token(values: Tensor, num_rows: int) -> Tensor:
    return values.sum() / max(num_rows, 1)


def _l1_penalty(sae, x: Tensor, pre: SparseCode, z: SparseCode, coefficient: float):
    """L1 weighted by decoder norms: Anthropic, "Circuits Updates - April 2024"."""
    weights = _decoder_norms(sae, z.values.dtype)[z.cols]
    return {"sparsity_loss": coefficient * _per_token(z.values.abs() * weights, z.num_rows)}


def _l0_penalty(sae, x: Tensor, pre: SparseCode, z: SparseCode, coefficient: float):
    """L0 through the step function's pseudo-gradient (Rajamanoharan et al. 2024, eq. 10)."""
    threshold = sae.threshold.to(pre.values.dtype)
    step = Step.apply(pre.values, pre.cols, threshold, sae.config.jumprelu_bandwidth)
    return {"sparsity_loss": coefficient * _per_token(step, z.num_rows)}


def _gated_penalty(sae, x: Tensor, pre: SparseCode, z: SparseCode, coefficient: float):
    """L1 on the gate's ReLU, and the gate alone must reconstruct x through a frozen decoder (their eq. 8). The
    kept entries are where the gate is open, so its ReLU is the kept pre-activations themselves."""
    weights = _decoder_norms(sae, pre.values.dtype).detach()[pre.cols]
    sparsity = coefficient * _per_token(pre.values * weights, pre.num_rows)
    via_gate = pre.decode(sae.W_dec.detach()) + sae.b_dec.detach().to(x.dtype)
    return {"sparsity_loss": sparsity, "auxiliary_loss": (via_gate - x).pow(2).sum(-1).mean()}


# ---- Matryoshka: nested prefixes of the dictionary ------------------------------------------------------------------


def _nested_reconstruction(sae, x: Tensor, z: SparseCode, with_loss: bool):
    """Each prefix of the dictionary (the first group, the first two, ...) reconstructs x on its own, and the loss
    sums their squared errors (Bussmann, Nabeshima, Karvonen, Nanda 2025, "Learning Multi-Level Features with
    Matryoshka Sparse Autoencoders", eq. 2; dictionary_learning's `MatryoshkaBatchTopKTrainer.loss` averages the
    same terms with group weights, a constant factor). The whole dictionary's error is `mse_loss`; the smaller
    prefixes' sum is `prefix_loss`. Each group's entries are decoded once and the prefixes accumulate."""
    sizes = sae.config.matryoshka_group_sizes
    ends = torch.tensor(list(accumulate(sizes)), device=z.cols.device)  # (groups,)
    group = torch.bucketize(z.cols, ends, right=True)  # (entries,): the group of each entry's latent
    order = torch.argsort(group, stable=True)  # contiguous groups, each still grouped by token
    per_group = torch.bincount(group, minlength=len(sizes)).tolist()
    parts = zip(*(t[order].split(per_group) for t in (z.rows, z.cols, z.values)))
    reconstruction, prefix_loss = sae.b_dec.to(x.dtype).expand_as(x), None
    for index, (rows, cols, values) in enumerate(parts):
        reconstruction = reconstruction + SparseCode(rows, cols, values, z.num_rows).decode(sae.W_dec)
        if with_loss and index < len(sizes) - 1:
            error = (reconstruction - x).pow(2).sum(-1).mean()
            prefix_loss = error if prefix_loss is None else prefix_loss + error
    return reconstruction, {} if prefix_loss is None else {"prefix_loss": prefix_loss}


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

# () global inference threshold of the BatchTopK family, learned by EMA; -1 means unset until the first training batch
_GLOBAL_THRESHOLD = ExtraTensor("threshold", per_latent=False, trainable=False, init=-1.0, in_latent_units=True)
_BATCHTOPK = {
    "uses_k": True,
    "select": lambda sae: select_batch_topk(sae.config.k),
    "dense_inference": _batchtopk_inference,
    "after_sparse_step": _track_batchtopk_threshold,
    "extra_tensors": (_GLOBAL_THRESHOLD,),
}

ARCHITECTURES: dict[str, Architecture] = {
    arch.name: arch
    for arch in (
        # ReLU SAEs start with short decoder rows (0.1) because their penalty scales with the norms.
        Architecture(
            "relu",
            "Anthropic, Circuits Updates, April 2024",
            select=lambda sae: _positive,
            activate=_identity,
            penalty=_l1_penalty,
            unit_norm_decoder=False,
            decoder_init_norm=0.1,
        ),
        Architecture("topk", "Gao et al. 2024", uses_k=True, select=lambda sae: select_topk(sae.config.k)),
        Architecture("batchtopk", "Bussmann et al. 2024", **_BATCHTOPK),
        Architecture(
            "matryoshka_batchtopk",
            "Bussmann, Nabeshima, Karvonen, Nanda 2025, Matryoshka SAEs (arXiv 2503.17547); Nabeshima 2024",
            reconstruct=_nested_reconstruction,
            **_BATCHTOPK,
        ),
        Architecture(
            "jumprelu",
            "Rajamanoharan et al. 2024, Jumping Ahead",
            select=_jumprelu_support,
            activate=_jumprelu,
            penalty=_l0_penalty,
            extra_tensors=(ExtraTensor("threshold", init="jumprelu_init_threshold", in_latent_units=True),),
        ),
        Architecture(
            "gated",
            "Rajamanoharan et al. 2024, Improving Dictionary Learning with Gated SAEs",
            select=lambda sae: _positive,
            activate=_gated_magnitude,
            penalty=_gated_penalty,
            extra_tensors=(ExtraTensor("r_mag"), ExtraTensor("b_mag", in_latent_units=True)),
        ),
    )
}
ArchitectureName = Literal[tuple(ARCHITECTURES)]  # for argument parsers: `--help` lists the choices


# ---- initial weights, whole or a shard's rows ----------------------------------------------------------------------

# Values of the initial directions drawn per call: memory bounded by this, not by the SAE's width.
INIT_CHUNK_VALUES = 2**22


def initial_directions(num_latents: int, d_in: int, norm: float, start: int = 0, stop: int | None = None) -> Tensor:
    """Rows [start, stop) of the (num_latents, d_in) random directions of length `norm` that start an SAE, drawn
    from the global RNG in chunks of rows: the numbers of one `torch.randn(num_latents, d_in)`, so a feature shard
    gets its rows of the unsharded SAE's initialisation without ever holding the whole. Torch's CPU normal sampler
    fills blocks of 16 values (Box-Muller on 8 pairs, the last 16 redrawn where the size is not a multiple); a
    chunk of a multiple of 16 values, and a last chunk of at least 16, continue one call's stream exactly
    (tests/test_feature_shards.py holds this). No chunk is larger than the rows asked for, or than
    `INIT_CHUNK_VALUES`, rounded up to a block."""
    stop = num_latents if stop is None else stop
    step = 16 // math.gcd(d_in, 16)  # rows whose values fill whole blocks of 16
    chunk_rows = max(step, min(INIT_CHUNK_VALUES // d_in, stop - start) // step * step)  # never more than the rows
    kept, row = [], 0
    while row < stop:
        end = min(row + chunk_rows, num_latents)
        end = num_latents if (num_latents - end) * d_in < 16 else end
        chunk = torch.randn(end - row, d_in, dtype=torch.float32)
        if end > start:
            kept.append(chunk[max(start - row, 0) : stop - row])
        row = end
    directions = kept[0] if len(kept) == 1 else torch.cat(kept)
    return directions.mul_(norm / directions.norm(dim=-1, keepdim=True))


def initial_tensors(cfg, start: int = 0, stop: int | None = None) -> dict[str, Tensor]:
    """Every tensor of a new SAE of config `cfg`, those with a row per latent cut to rows [start, stop)."""
    arch, stop = ARCHITECTURES[cfg.architecture], cfg.num_latents if stop is None else stop
    rows = stop - start
    # Decoder rows are random directions; the encoder starts as the decoder's transpose (Conerly et al., Anthropic
    # April 2024 update). A transcoder's decoder starts at zero, so its first prediction is b_dec, not noise
    # (EleutherAI sparsify's choice); a skip term starts at zero (Paulo et al. 2025).
    directions = initial_directions(cfg.num_latents, cfg.d_in, arch.decoder_init_norm, start, stop)
    tensors = {"W_enc": directions, "W_dec": torch.zeros(rows, cfg.d_out) if cfg.is_transcoder else directions,
               "b_dec": torch.zeros(cfg.d_out), "b_enc": torch.zeros(rows)}  # fmt: skip
    if cfg.skip_connection:
        tensors["W_skip"] = torch.zeros(cfg.d_out, cfg.d_in)
    for extra in arch.extra_tensors:
        value = getattr(cfg, extra.init) if isinstance(extra.init, str) else extra.init
        tensors[extra.name] = torch.full((rows,) if extra.per_latent else (), float(value))
    return tensors


# ---- unit-norm decoder rows -----------------------------------------------------------------------------------------

# Decoder norms this close count as one: a unit-norm decoder trained on scaled activations has every row at 1 / scale.
UNIFORM_NORM_RTOL = 1e-4


@torch.no_grad()
def fold_decoder_norm_(sae) -> Tensor:
    """Scale every decoder row of `sae` to unit norm and each latent up by its row's norm, in place, so that every
    reconstruction is unchanged (SAELens' `fold_W_dec_norm`). Returns the norms, `(num_latents,)`: the new latents
    are the old ones times them.

    A positive per-latent scale s passes through relu, JumpReLU (with θ scaled) and the gated SAE's gate and
    magnitude paths (W_enc and b_mag scaled, r_mag kept), so W_enc's rows, b_enc and the extra tensors in latent
    units take s. TopK and BatchTopK rank latents against each other: only one scale shared by all keeps their
    choice, so their decoder rows must share one norm (as a unit-norm decoder with a folded activation scale does).
    An all-zero row has no direction: its latent takes the common scale."""
    arch, eps = ARCHITECTURES[sae.config.architecture], torch.finfo(torch.float32).tiny
    norms = sae.W_dec.detach().float().norm(dim=-1)  # (num_latents,)
    live = norms > eps
    common = norms[live].median() if live.any() else norms.new_tensor(1.0)
    if arch.uses_k and live.any() and (spread := float(norms[live].max() / norms[live].min() - 1)) > UNIFORM_NORM_RTOL:
        raise SaeConfigError(
            f"This {arch.name} SAE's decoder rows have norms from {float(norms[live].min()):.4g} to "
            f"{float(norms[live].max()):.4g} ({spread:.2%} apart); folding them would scale each latent by its own "
            f"norm and change which latents {arch.name} keeps. Only decoders whose rows share one norm (within "
            f"{UNIFORM_NORM_RTOL:g}) fold exactly; keep this decoder as it is."
        )
    norms = torch.where(live, norms, common)
    for name, shape in (("W_enc", (-1, 1)), ("b_enc", (-1,)), ("W_dec", (-1, 1))):
        tensor = getattr(sae, name)
        scale = norms.to(tensor.dtype).reshape(shape)
        tensor.div_(scale) if name == "W_dec" else tensor.mul_(scale)
    for extra in arch.extra_tensors:
        tensor = getattr(sae, extra.name)
        if extra.in_latent_units and extra.per_latent:
            tensor.mul_(norms.to(tensor.dtype))
        elif extra.in_latent_units and tensor >= 0:  # a global threshold; below 0 it is unset and keeps every latent
            tensor.mul_(common.to(tensor.dtype))
    return norms


# ---- straight-through pieces for JumpReLU (Rajamanoharan et al. 2024, "Jumping Ahead"), on the kept entries -------
# `pre` holds one entry per kept (token, latent) pair and `cols` its latent; the threshold gradient is summed per
# latent over the kept entries, which include every entry inside the kernel's support.


def _rectangle(u: Tensor) -> Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


def _per_latent(values: Tensor, cols: Tensor, threshold: Tensor) -> Tensor:
    return torch.zeros_like(threshold).index_add_(0, cols, values)


class JumpReLU(torch.autograd.Function):
    """z = pre * H(pre - θ), with d/dθ = -(θ / bandwidth) * rectangle((pre - θ) / bandwidth)."""

    @staticmethod
    def forward(ctx, pre: Tensor, cols: Tensor, threshold: Tensor, bandwidth: float):
        ctx.save_for_backward(pre, cols, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold[cols])

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        pre, cols, threshold = ctx.saved_tensors
        theta = threshold[cols]
        grad_pre = grad_out * (pre > theta)
        kernel = _rectangle((pre - theta) / ctx.bandwidth)
        grad_threshold = _per_latent(-(theta / ctx.bandwidth) * kernel * grad_out, cols, threshold)
        return grad_pre, None, grad_threshold, None


class Step(torch.autograd.Function):
    """H(pre - θ) for the L0 penalty, with d/dθ = -(1 / bandwidth) * rectangle((pre - θ) / bandwidth)."""

    @staticmethod
    def forward(ctx, pre: Tensor, cols: Tensor, threshold: Tensor, bandwidth: float):
        ctx.save_for_backward(pre, cols, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold[cols]).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        pre, cols, threshold = ctx.saved_tensors
        kernel = _rectangle((pre - threshold[cols]) / ctx.bandwidth)
        return None, None, _per_latent(-(1.0 / ctx.bandwidth) * kernel * grad_out, cols, threshold), None
