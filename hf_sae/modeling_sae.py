"""`SaeModel`: a sparse autoencoder as a `transformers.PreTrainedModel`, with every architecture in this one file.

Math, shared by all architectures (row i of `W_enc` and `W_dec` belongs to latent i):

    pre = (x - b_dec) @ W_enc.T + b_enc        (b_dec subtracted when `apply_b_dec_to_input`)
    z   = activation(pre)                       (N, num_latents), mostly zeros
    x̂   = z @ W_dec + b_dec

The k family (topk, batchtopk) keeps z as (row, latent, value) triplets and never builds the dense (N, num_latents)
gradient: the decoder and the encoder's backward touch only the active latents, so a training step costs about one
dense encoder matmul (the approach of Gao et al. 2024 and EleutherAI's sparsify, written here with `embedding_bag`).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput, logging

from .configuration_sae import SaeConfig
from .errors import WeightsError

logger = logging.get_logger(__name__)

# Exponential moving average decay of the BatchTopK inference threshold (as in dictionary_learning's trainer).
BATCHTOPK_THRESHOLD_DECAY = 0.99


@dataclass
class SaeOutput(ModelOutput):
    """
    Output of [`SaeModel.forward`].

    Args:
        reconstruction (`torch.Tensor` of shape `(..., d_in)`): x̂, the SAE's reconstruction of its input.
        latents (`torch.Tensor` of shape `(..., num_latents)`, *optional*): the latent activations z (dense).
        latent_counts (`torch.LongTensor` of shape `(num_latents,)`): tokens of this batch on which each latent fired.
        l0 (`torch.Tensor`): mean number of active latents per token.
        loss (`torch.Tensor`, *optional*): training loss, `mse_loss + sparsity_loss + auxiliary_loss`.
        mse_loss (`torch.Tensor`, *optional*): squared error summed over d_in, averaged over tokens.
        sparsity_loss (`torch.Tensor`, *optional*): the architecture's sparsity penalty, coefficient applied.
        auxiliary_loss (`torch.Tensor`, *optional*): AuxK (k family) or the gated auxiliary reconstruction loss.
    """

    reconstruction: Tensor | None = None
    latents: Tensor | None = None
    latent_counts: Tensor | None = None
    l0: Tensor | None = None
    loss: Tensor | None = None
    mse_loss: Tensor | None = None
    sparsity_loss: Tensor | None = None
    auxiliary_loss: Tensor | None = None


# ----------------------------------------------------------------------------------------------------
# Sparse kernels for the k family. A sparse code is three flat tensors: `rows` (token), `cols` (latent), `values`,
# with the entries of each token next to each other (rows sorted).


def _sum_by_token(cols: Tensor, table: Tensor, offsets: Tensor, weights: Tensor) -> Tensor:
    """out[n] = sum of weights[e] * table[cols[e]] over token n's entries, which start at offsets[n]; (N, d)."""
    return F.embedding_bag(cols, table, offsets, mode="sum", per_sample_weights=weights.to(table.dtype))


def _sum_by_latent(cols: Tensor, rows: Tensor, table: Tensor, weights: Tensor, num_latents: int) -> Tensor:
    """out[i] = sum of weights[e] * table[rows[e]] over entries of latent i, as one bag per latent; (num_latents, d).
    This is the weight gradient of a sparse matmul without the (entries, d) intermediate that index_add needs."""
    order = torch.argsort(cols)
    counts = torch.bincount(cols, minlength=num_latents)
    return _sum_by_token(rows[order], table, counts.cumsum(0) - counts, weights[order])


def _row_offsets(rows: Tensor, num_rows: int) -> Tensor:
    """Where each token's entries start in `rows`, which is sorted (tokens without entries get empty bags)."""
    return torch.searchsorted(rows, torch.arange(num_rows, device=rows.device))


class _SparseEncode(torch.autograd.Function):
    """pre = x @ W_enc.T + b_enc, then `select(pre)` keeps some entries; backward touches only the kept entries."""

    @staticmethod
    def forward(ctx, x: Tensor, W_enc: Tensor, b_enc: Tensor, select):  # noqa: N803
        pre = torch.addmm(b_enc.to(x.dtype), x, W_enc.to(x.dtype).T)  # (N, num_latents)
        rows, cols, values = select(pre)
        ctx.save_for_backward(x, W_enc, rows, cols)
        ctx.mark_non_differentiable(rows, cols)
        return rows, cols, values

    @staticmethod
    def backward(ctx, _grad_rows, _grad_cols, grad_values: Tensor):
        x, W_enc, rows, cols = ctx.saved_tensors  # noqa: N806
        grad_x = grad_W_enc = grad_b_enc = None
        if ctx.needs_input_grad[0]:
            order = torch.argsort(rows, stable=True)  # the AuxK entries follow the main ones: regroup by token
            offsets = _row_offsets(rows[order], x.shape[0])
            grad_x = _sum_by_token(cols[order], W_enc.to(x.dtype), offsets, grad_values[order])
        if ctx.needs_input_grad[1]:
            grad_W_enc = _sum_by_latent(cols, rows, x, grad_values, W_enc.shape[0]).to(W_enc.dtype)
        if ctx.needs_input_grad[2]:
            grad_b_enc = torch.zeros(W_enc.shape[0], dtype=W_enc.dtype, device=W_enc.device)
            grad_b_enc.index_add_(0, cols, grad_values.to(W_enc.dtype))
        return grad_x, grad_W_enc, grad_b_enc, None


class _SparseDecode(torch.autograd.Function):
    """x̂ = z @ W_dec for a sparse z whose entries are grouped by token, as one `embedding_bag`."""

    @staticmethod
    def forward(ctx, rows: Tensor, cols: Tensor, values: Tensor, W_dec: Tensor, num_rows: int):  # noqa: N803
        offsets = _row_offsets(rows, num_rows)
        ctx.save_for_backward(rows, cols, values, W_dec, offsets)
        return _sum_by_token(cols, W_dec, offsets, values)  # (N, d_in)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        rows, cols, values, W_dec, offsets = ctx.saved_tensors  # noqa: N806
        grad_values = grad_W_dec = None
        if ctx.needs_input_grad[2]:
            # embedding_bag's own per-sample-weight gradient: each grad_out[row] . W_dec[col] computed in place, where
            # gathering the (entries, d_in) rows first would cost as much memory traffic as the encoder matmul.
            grad_values = torch.ops.aten._embedding_bag_per_sample_weights_backward(
                grad_out,
                W_dec.to(grad_out.dtype),
                cols,
                offsets,
                rows,
                0,  # mode 0: sum
            ).to(values.dtype)
        if ctx.needs_input_grad[3]:
            grad_W_dec = _sum_by_latent(cols, rows, grad_out, values, W_dec.shape[0]).to(W_dec.dtype)
        return None, None, grad_values, grad_W_dec, None


def _select_topk(k: int):
    """Top k latents per token (Gao et al. 2024, "Scaling and evaluating sparse autoencoders")."""

    def select(pre: Tensor):
        values, cols = pre.topk(k, dim=-1, sorted=False)  # (N, k)
        rows = torch.arange(pre.shape[0], device=pre.device).repeat_interleave(k)
        return rows, cols.flatten(), values.flatten()

    return select


def _select_batch_topk(k: int):
    """Top k * N entries over a whole batch of N tokens (Bussmann et al. 2024, "BatchTopK Sparse Autoencoders")."""

    def select(pre: Tensor):
        values, flat = pre.flatten().topk(min(k * pre.shape[0], pre.numel()), sorted=False)
        flat, order = flat.sort()  # group the entries by token, as the decoder needs
        return flat // pre.shape[1], flat % pre.shape[1], values[order]

    return select


def _with_auxk(select, dead: Tensor, k_aux: int):
    """Append the top `k_aux` pre-activations among dead latents per token, for AuxK (Gao et al. 2024, A.2)."""

    def select_both(pre: Tensor):
        rows, cols, values = select(pre)
        aux_values, aux_cols = pre.masked_fill(~dead, float("-inf")).topk(k_aux, dim=-1, sorted=False)
        aux_rows = torch.arange(pre.shape[0], device=pre.device).repeat_interleave(k_aux)
        return (
            torch.cat([rows, aux_rows]),
            torch.cat([cols, aux_cols.flatten()]),
            torch.cat([values, aux_values.flatten()]),
        )

    return select_both


# ----------------------------------------------------------------------------------------------------
# Pieces with straight-through pseudo-gradients for JumpReLU (Rajamanoharan et al. 2024, "Jumping Ahead").


def _rectangle(u: Tensor) -> Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
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


class _Step(torch.autograd.Function):
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


# ----------------------------------------------------------------------------------------------------


class SaePreTrainedModel(PreTrainedModel):
    config: SaeConfig
    base_model_prefix = "sae"
    main_input_name = "x"
    supports_gradient_checkpointing = False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if not isinstance(module, SaeModel):
            return
        cfg = module.config
        # Decoder rows are random directions; the encoder starts as the decoder's transpose (Conerly et al.,
        # Anthropic April 2024 update). ReLU SAEs start with short rows (0.1) because their penalty scales with them.
        directions = torch.randn(cfg.num_latents, cfg.d_in, dtype=torch.float32)
        directions /= directions.norm(dim=-1, keepdim=True)
        directions *= 0.1 if cfg.architecture == "relu" else 1.0
        init.copy_(module.W_dec, directions)
        init.copy_(module.W_enc, directions)
        init.zeros_(module.b_dec)
        for name in ("b_enc", "b_mag", "r_mag"):
            if hasattr(module, name):
                init.zeros_(getattr(module, name))
        if cfg.architecture == "jumprelu":
            init.constant_(module.threshold, cfg.jumprelu_init_threshold)
        if cfg.architecture == "batchtopk":
            init.constant_(module.threshold, -1.0)  # unset until the first training batch


class SaeModel(SaePreTrainedModel):
    r"""
    A sparse autoencoder over one activation of a language model.

    Example:

    ```python
    >>> import torch
    >>> from hf_sae import SaeConfig, SaeModel
    >>> sae = SaeModel(SaeConfig(d_in=64, expansion_factor=8, architecture="topk", k=4))
    >>> out = sae(torch.randn(2, 10, 64))
    >>> out.reconstruction.shape, int((out.latents != 0).sum(-1).max())
    (torch.Size([2, 10, 64]), 4)
    ```
    """

    def __init__(self, config: SaeConfig):
        super().__init__(config)
        d_in, n = config.d_in, config.num_latents
        self.W_enc = nn.Parameter(torch.empty(n, d_in))  # (num_latents, d_in)
        self.W_dec = nn.Parameter(torch.empty(n, d_in))  # (num_latents, d_in); row i is feature i's direction
        self.b_dec = nn.Parameter(torch.empty(d_in))  # (d_in,)
        if config.architecture == "gated":
            # Gated SAE (Rajamanoharan et al. 2024, "Improving Dictionary Learning with Gated Sparse Autoencoders"):
            # the gate uses W_enc with bias b_gate, the magnitude uses W_enc * exp(r_mag) with bias b_mag.
            self.b_enc = nn.Parameter(torch.empty(n))  # (num_latents,) the gate bias
            self.r_mag = nn.Parameter(torch.empty(n))  # (num_latents,)
            self.b_mag = nn.Parameter(torch.empty(n))  # (num_latents,)
        else:
            self.b_enc = nn.Parameter(torch.empty(n))  # (num_latents,)
        if config.architecture == "jumprelu":
            self.threshold = nn.Parameter(torch.empty(n))  # (num_latents,) learned per latent
        if config.architecture == "batchtopk":
            self.register_buffer("threshold", torch.empty(()))  # () global inference threshold, learned by EMA
        self.post_init()

    # ------------------------------------------------------------------------------------------------

    @property
    def uses_unit_norm_decoder(self) -> bool:
        """Whether training keeps decoder rows at unit norm (all but `relu`, whose penalty weighs in the norms)."""
        return self.config.architecture != "relu"

    @property
    def features(self):
        """Feature metadata (`hf_sae.features.FeatureMetadata`) from `<folder>/features/`, read on first use."""
        if getattr(self, "_features", None) is None:
            from .features import load_features  # lazy: features imports this module

            self._features = load_features(self)
        return self._features

    @features.setter
    def features(self, value) -> None:
        self._features = value

    def _encoder_input(self, x: Tensor) -> Tensor:
        return x - self.b_dec.to(x.dtype) if self.config.apply_b_dec_to_input else x

    def _pre_activation(self, x: Tensor) -> Tensor:
        return torch.addmm(self.b_enc.to(x.dtype), self._encoder_input(x), self.W_enc.to(x.dtype).T)

    def _uses_sparse_code(self) -> bool:
        return self.config.architecture == "topk" or (self.config.architecture == "batchtopk" and self.training)

    def _sparse_code(self, x: Tensor, dead: Tensor | None = None, k_aux: int = 0):
        """(rows, cols, values) of the active latents of a (N, d_in) batch; AuxK entries appended when asked."""
        cfg = self.config
        select = _select_topk(cfg.k) if cfg.architecture == "topk" else _select_batch_topk(cfg.k)
        if k_aux:
            select = _with_auxk(select, dead, k_aux)
        rows, cols, values = _SparseEncode.apply(self._encoder_input(x), self.W_enc, self.b_enc, select)
        return rows, cols, values.relu()

    def _dense_code(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(z, pre) for the dense architectures, and for batchtopk at inference."""
        cfg = self.config
        if cfg.architecture == "gated":
            x_enc = self._encoder_input(x)
            pre = torch.addmm(self.b_enc.to(x.dtype), x_enc, self.W_enc.to(x.dtype).T)  # the gate
            magnitude_weight = self.W_enc * self.r_mag.exp()[:, None]
            magnitude = torch.addmm(self.b_mag.to(x.dtype), x_enc, magnitude_weight.to(x.dtype).T)
            return (pre > 0).to(x.dtype) * magnitude.relu(), pre
        pre = self._pre_activation(x)  # (N, num_latents)
        if cfg.architecture == "relu":
            return pre.relu(), pre
        if cfg.architecture == "jumprelu":
            return _JumpReLU.apply(pre, self.threshold.to(pre.dtype), cfg.jumprelu_bandwidth), pre
        return pre.relu() * (pre > self.threshold.to(pre.dtype)), pre  # batchtopk at inference

    def encode(self, x: Tensor) -> Tensor:
        """Latent activations z of shape `(..., num_latents)` for activations x of shape `(..., d_in)`."""
        flat = self._check_input(x).reshape(-1, self.config.d_in)
        if self._uses_sparse_code():
            z = _dense_latents(*self._sparse_code(flat), (flat.shape[0], self.config.num_latents))
        else:
            z, _ = self._dense_code(flat)
        return z.reshape(*x.shape[:-1], self.config.num_latents)

    def decode(self, z: Tensor) -> Tensor:
        """Reconstruction x̂ of shape `(..., d_in)` from latents z of shape `(..., num_latents)`."""
        return z @ self.W_dec.to(z.dtype) + self.b_dec.to(z.dtype)

    def forward(
        self,
        x: Tensor,
        *,
        return_loss: bool | None = None,
        return_latents: bool = True,
        dead_latents: Tensor | None = None,
        sparsity_coefficient: float | None = None,
    ) -> SaeOutput:
        r"""
        Encode and decode x of shape `(..., d_in)`.

        Args:
            return_loss (`bool`, *optional*): compute the training loss; defaults to `self.training`.
            return_latents (`bool`, defaults to `True`): also return the dense latents (training can skip them).
            dead_latents (`torch.BoolTensor` of shape `(num_latents,)`, *optional*): latents that have not fired for
                a long time; the k family trains them with AuxK.
            sparsity_coefficient (`float`, *optional*): overrides `config.sparsity_coefficient` (for its warm-up).
        """
        cfg = self.config
        flat = self._check_input(x).reshape(-1, cfg.d_in)  # (N, d_in)
        num_tokens = flat.shape[0]
        return_loss = self.training if return_loss is None else return_loss
        coefficient = cfg.sparsity_coefficient if sparsity_coefficient is None else sparsity_coefficient
        sparsity_loss = auxiliary_loss = None

        if self._uses_sparse_code():
            k_aux = _auxk_width(cfg, dead_latents) if return_loss else 0
            rows, cols, values = self._sparse_code(flat, dead_latents, k_aux)
            num_main = rows.shape[0] - k_aux * num_tokens
            rows, aux_rows = rows[:num_main], rows[num_main:]
            cols, aux_cols = cols[:num_main], cols[num_main:]
            values, aux_values = values[:num_main], values[num_main:]
            if cfg.architecture == "batchtopk" and self.training:
                self._update_batchtopk_threshold(values)
            latent_counts = torch.bincount(cols, weights=(values > 0).float(), minlength=cfg.num_latents).long()
            reconstruction = _SparseDecode.apply(rows, cols, values, self.W_dec, num_tokens)
            reconstruction = reconstruction + self.b_dec.to(flat.dtype)
            latents = _dense_latents(rows, cols, values, (num_tokens, cfg.num_latents)) if return_latents else None
            if return_loss and k_aux:
                residual = (flat - reconstruction).detach()
                aux_reconstruction = _SparseDecode.apply(aux_rows, aux_cols, aux_values, self.W_dec, num_tokens)
                auxiliary_loss = cfg.auxk_coefficient * _auxk_loss(flat, residual, aux_reconstruction)
        else:
            latents, pre = self._dense_code(flat)
            reconstruction = self.decode(latents)
            latent_counts = (latents != 0).sum(0)
            if return_loss:
                sparsity_loss, auxiliary_loss = self._dense_penalties(flat, latents, pre, coefficient)
            latents = latents if return_latents else None

        l0 = latent_counts.sum() / max(num_tokens, 1)
        mse_loss = loss = None
        if return_loss:
            mse_loss = (reconstruction - flat).pow(2).sum(-1).mean()
            loss = mse_loss + sum(t for t in (sparsity_loss, auxiliary_loss) if t is not None)
        return SaeOutput(
            reconstruction=reconstruction.reshape(x.shape),
            latents=None if latents is None else latents.reshape(*x.shape[:-1], cfg.num_latents),
            latent_counts=latent_counts,
            l0=l0,
            loss=loss,
            mse_loss=mse_loss,
            sparsity_loss=sparsity_loss,
            auxiliary_loss=auxiliary_loss,
        )

    def _dense_penalties(self, x: Tensor, z: Tensor, pre: Tensor, coefficient: float):
        cfg = self.config
        decoder_norms = self.W_dec.norm(dim=-1).to(z.dtype)  # (num_latents,)
        if cfg.architecture == "relu":
            # L1 weighted by decoder norms: Anthropic, "Circuits Updates - April 2024".
            return coefficient * (z.abs() * decoder_norms).sum(-1).mean(), None
        if cfg.architecture == "jumprelu":
            # L0 through the step function's pseudo-gradient (Rajamanoharan et al. 2024, eq. 10).
            step = _Step.apply(pre, self.threshold.to(pre.dtype), cfg.jumprelu_bandwidth)
            return coefficient * step.sum(-1).mean(), None
        if cfg.architecture == "gated":
            # L1 on the gate's ReLU, and the gate alone must reconstruct x through a frozen decoder (their eq. 8).
            gate = pre.relu()
            sparsity = coefficient * (gate * decoder_norms.detach()).sum(-1).mean()
            via_gate = gate @ self.W_dec.detach().to(gate.dtype) + self.b_dec.detach().to(gate.dtype)
            return sparsity, (via_gate - x).pow(2).sum(-1).mean()
        return None, None  # batchtopk at inference

    @torch.no_grad()
    def _update_batchtopk_threshold(self, values: Tensor) -> None:
        """The inference threshold tracks the smallest activation BatchTopK kept (Bussmann et al. 2024, sec. 3)."""
        positive = values[values > 0]
        if positive.numel() == 0:
            return
        smallest = positive.min().to(self.threshold.dtype)
        if self.threshold < 0:
            self.threshold.copy_(smallest)
        else:
            self.threshold.lerp_(smallest, 1 - BATCHTOPK_THRESHOLD_DECAY)

    def _check_input(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.config.d_in:
            raise ValueError(
                f"SaeModel expects activations of shape (..., d_in={self.config.d_in}); got shape {tuple(x.shape)}. "
                "Check that the SAE matches the hookpoint it reads."
            )
        return x

    # --------------------------------------------------------------------------------------------------------------
    # Weight maintenance used by training.

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Scale every decoder row to unit norm."""
        self.W_dec.div_(self.W_dec.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(self.W_dec.dtype).eps))

    @torch.no_grad()
    def remove_gradient_parallel_to_decoder_(self) -> None:
        """Project out the part of each decoder row's gradient along the row, so a unit-norm row stays unit-norm."""
        if self.W_dec.grad is None:
            return
        parallel = (self.W_dec.grad * self.W_dec).sum(-1, keepdim=True)
        self.W_dec.grad.sub_(parallel * self.W_dec)

    @torch.no_grad()
    def fold_activation_scale_(self, scale: float) -> None:
        """Make an SAE trained on `scale * x` take raw x: the encoder absorbs the scale, the decoder undoes it."""
        self.W_enc.mul_(scale)  # the gated magnitude path reuses W_enc, so it is folded too
        self.W_dec.div_(scale)
        self.b_dec.div_(scale)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """[`PreTrainedModel.from_pretrained`], strict about weights: a tensor whose shape disagrees with the config
        or that is missing raises [`WeightsError`]; a tensor this version does not know warns (a newer hf_sae)."""
        want_info = kwargs.pop("output_loading_info", False)
        kwargs.setdefault("ignore_mismatched_sizes", True)  # so that we, not a generic report, explain the mismatch
        model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        source = args[0] if args else kwargs.get("pretrained_model_name_or_path")
        for name, saved, expected in sorted(info["mismatched_keys"]):
            raise WeightsError(
                f"Weight `{name}` in {source} has shape {tuple(saved)} but its config (d_in={model.config.d_in}, "
                f"num_latents={model.config.num_latents}) expects {tuple(expected)}. The weights file and "
                "config.json do not belong together: re-save the SAE or fix config.json."
            )
        if info["missing_keys"]:
            raise WeightsError(
                f"The weights in {source} lack {sorted(info['missing_keys'])}, which a "
                f"{model.config.architecture!r} SAE needs. The file is incomplete or was saved for another "
                "architecture."
            )
        if info["unexpected_keys"]:
            logger.warning(
                f"Ignoring weights {sorted(info['unexpected_keys'])} in {source}: this version of hf_sae does not use "
                "them (they were probably written by a newer hf_sae). Upgrade hf_sae to use them."
            )
        return (model, info) if want_info else model


def _dense_latents(rows: Tensor, cols: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    z = torch.zeros(shape, dtype=values.dtype, device=values.device)
    return z.index_put_((rows, cols), values, accumulate=True)


def _auxk_width(config: SaeConfig, dead: Tensor | None) -> int:
    """AuxK uses the top d_in / 2 dead latents per token (sparsify's choice), fewer if fewer are dead."""
    if dead is None or config.auxk_coefficient == 0:
        return 0
    return min(config.d_in // 2, int(dead.sum()))


def _auxk_loss(x: Tensor, residual: Tensor, aux_reconstruction: Tensor) -> Tensor:
    """Gao et al.'s normalised AuxK error ||e - ê||² / ||e - ē||², rescaled to the units of `mse_loss`."""
    error = (aux_reconstruction - residual).pow(2).sum()
    residual_variance = (residual - residual.mean(0)).pow(2).sum().clamp_min(1e-12)
    input_variance_per_token = (x - x.mean(0)).pow(2).sum(-1).mean().detach()
    return error / residual_variance * input_variance_per_token
