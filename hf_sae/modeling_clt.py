"""`CltModel`: a cross-layer transcoder as a `transformers.PreTrainedModel` (Ameisen et al. 2025, "Circuit Tracing:
Revealing Computational Graphs in Language Models"; Lindsey et al. 2024 on crosscoders).

One encoder per layer reads that layer's MLP input; layer l's latents decode into the MLP output of every layer
l' >= l, so the prediction of layer l' sums the decoders of layers 0..l'. Inputs and targets stack the layers on the
second-to-last axis: x `(..., n_layers, d_in)`, target `(..., n_layers, d_out)`.
"""

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .architectures import BATCHTOPK_THRESHOLD_DECAY, JumpReLU
from .configuration_clt import CltConfig
from .errors import FeatureMetadataError, HookpointError
from .feature_store import LayerFeatures, load_layer_features
from .hub_client import HubOptions, hub_errors
from .layout import FEATURES


@dataclass
class CltOutput(ModelOutput):
    """
    Output of [`CltModel.forward`].

    Args:
        reconstruction (`torch.Tensor` of shape `(..., n_layers, d_out)`): the prediction of every MLP output.
        latents (`torch.Tensor` of shape `(..., n_layers, num_latents)`): the latent activations.
        l0 (`torch.Tensor`): mean active latents per token and layer.
        latent_counts (`torch.LongTensor` of shape `(n_layers, num_latents)`): tokens on which each latent fired.
        loss (`torch.Tensor`, *optional*): `mse_loss + sparsity_loss + pre_act_loss`.
        mse_loss (`torch.Tensor`, *optional*): each layer's squared error over its target's variance, summed over
            layers (a sum of per-layer FVUs).
        sparsity_loss (`torch.Tensor`, *optional*): JumpReLU's tanh penalty, coefficient applied.
        pre_act_loss (`torch.Tensor`, *optional*): JumpReLU's pre-activation penalty, coefficient applied.
    """

    reconstruction: Tensor | None = None
    latents: Tensor | None = None
    l0: Tensor | None = None
    latent_counts: Tensor | None = None
    loss: Tensor | None = None
    mse_loss: Tensor | None = None
    sparsity_loss: Tensor | None = None
    pre_act_loss: Tensor | None = None


class CltPreTrainedModel(PreTrainedModel):
    config: CltConfig
    base_model_prefix = "clt"
    main_input_name = "x"
    supports_gradient_checkpointing = False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if not isinstance(module, CltModel):
            return
        cfg = module.config
        # Uniform in ±1/sqrt(fan-in): the encoder over d_in, each decoder over the layers it writes to (Ameisen et al.
        # 2025 initialise the decoders at ±1/sqrt(n_layers · d_model)).
        bound = cfg.d_in**-0.5
        init.uniform_(module.W_enc, -bound, bound)
        for decoder in module.W_dec:
            bound = (cfg.n_layers * cfg.d_out) ** -0.5
            init.uniform_(decoder, -bound, bound)
        init.zeros_(module.b_enc)
        init.zeros_(module.b_dec)
        if cfg.architecture == "jumprelu":
            init.constant_(module.threshold, cfg.jumprelu_init_threshold)
        elif cfg.architecture == "batchtopk":
            init.constant_(module.threshold, -1.0)  # unset until the first training batch


class CltModel(CltPreTrainedModel):
    r"""
    A cross-layer transcoder that replaces the MLPs of `n_layers` layers.

    Example:

    ```python
    >>> import torch
    >>> from hf_sae import CltConfig, CltModel
    >>> clt = CltModel(CltConfig(n_layers=3, d_in=16, num_latents=32, architecture="topk", k=4)).eval()
    >>> out = clt(torch.randn(5, 3, 16))
    >>> out.reconstruction.shape, int((out.latents != 0).sum(-1).max())
    (torch.Size([5, 3, 16]), 4)
    ```
    """

    uses_unit_norm_decoder = False  # the decoder norms enter the sparsity penalty instead (JumpReLU)

    def __init__(self, config: CltConfig):
        super().__init__(config)
        L, n, shapes = config.n_layers, config.num_latents, config.tensor_shapes()  # noqa: N806
        self.W_enc = nn.Parameter(torch.empty(shapes["W_enc"]))  # (n_layers, num_latents, d_in)
        self.b_enc = nn.Parameter(torch.empty(shapes["b_enc"]))  # (n_layers, num_latents)
        # W_dec[l]: (num_latents, n_layers - l, d_out), layer l's latents into layers l..n_layers-1
        self.W_dec = nn.ParameterList(nn.Parameter(torch.empty(shapes[f"W_dec.{layer}"])) for layer in range(L))
        self.b_dec = nn.Parameter(torch.empty(shapes["b_dec"]))  # (n_layers, d_out)
        if config.architecture == "jumprelu":
            self.threshold = nn.Parameter(torch.empty(L, n))  # (n_layers, num_latents), learned
        elif config.architecture == "batchtopk":
            self.register_buffer("threshold", torch.empty(L))  # (n_layers,), tracked during training
        self.post_init()

    @classmethod
    def from_tensors(cls, config: CltConfig, tensors: dict[str, Tensor], name_or_path: str = "") -> "CltModel":
        """A transcoder holding exactly `tensors` (as a format reader returns them); no initialisation runs."""
        with torch.device("meta"):
            clt = cls(config)
        clt.load_state_dict({k: v.contiguous() for k, v in tensors.items()}, strict=True, assign=True)
        clt.config._name_or_path = clt.name_or_path = str(name_or_path)
        return clt.eval()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """[`PreTrainedModel.from_pretrained`]; the Hub revision, token and cache are kept to fetch `features` from."""
        loaded = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        clt = loaded[0] if isinstance(loaded, tuple) else loaded
        clt._hub_options = HubOptions(*(kwargs.get(key) for key in ("revision", "token", "cache_dir")),
                                      local_files_only=bool(kwargs.get("local_files_only")))  # fmt: skip
        return loaded

    @property
    def features(self) -> LayerFeatures:
        """Feature metadata per layer, `{layer: FeatureMetadata}`, from `<folder>/features/layer_{l}/` (`hf-sae
        features --sae <folder>`), read on first use; for a CLT from a Hub repo, its `features/` is downloaded then.
        Where there is none, `FeatureMetadataError` (raised again without asking the Hub again)."""
        if getattr(self, "_features", None) is None:
            if (error := getattr(self, "_features_error", None)) is not None:
                raise error
            try:
                self._features = load_layer_features(self._features_folder())
            except FeatureMetadataError as failure:
                self._features_error = failure
                raise
        return self._features

    @features.setter
    def features(self, value: LayerFeatures | None) -> None:
        self._features, self._features_error = value, None

    def _features_folder(self) -> Path:
        source = str(self.name_or_path or "")
        if not source:
            raise FeatureMetadataError("This cross-layer transcoder was not loaded from a folder: it has no features.")
        if Path(source).is_dir():
            return Path(source)
        options = getattr(self, "_hub_options", None) or HubOptions()  # a Hub repo id
        with hub_errors(source, options.revision, options.token):
            return options.download(source, [f"{FEATURES}/*"])

    # ---- the pieces -------------------------------------------------------------------------------------------------

    def pre_activation(self, x: Tensor) -> Tensor:
        """`(..., n_layers, num_latents)` from x `(..., n_layers, d_in)`."""
        self._check(x, self.config.d_in, "x")
        return torch.einsum("...ld,lnd->...ln", x, self.W_enc.to(x.dtype)) + self.b_enc.to(x.dtype)

    def activate(self, pre: Tensor) -> Tensor:
        """The latents from their pre-activations: JumpReLU, TopK per token and layer, or BatchTopK per layer."""
        cfg = self.config
        if cfg.architecture == "jumprelu":
            if not self.training:
                return pre * (pre > self.threshold.to(pre.dtype))
            # The straight-through JumpReLU of the SAEs (Rajamanoharan et al. 2024), one latent per (layer, latent).
            flat, width = pre.reshape(-1), pre.shape[-2] * pre.shape[-1]
            cols = torch.arange(width, device=pre.device).repeat(flat.numel() // width)
            return JumpReLU.apply(flat, cols, self.threshold.reshape(-1), cfg.jumprelu_bandwidth).reshape(pre.shape)
        if cfg.architecture == "topk":
            values, indices = pre.topk(cfg.k, dim=-1)
            return torch.zeros_like(pre).scatter(-1, indices, values.relu())
        if not self.training and bool((self.threshold >= 0).all()):
            return pre.relu() * (pre > self.threshold.to(pre.dtype)[:, None])
        return self._batch_topk(pre)

    def _batch_topk(self, pre: Tensor) -> Tensor:
        """k · tokens latents per layer over the whole batch (Bussmann et al. 2024), each layer on its own."""
        per_layer = pre.reshape(-1, *pre.shape[-2:]).transpose(0, 1).reshape(pre.shape[-2], -1)  # (L, tokens · n)
        keep = min(self.config.k * (per_layer.shape[1] // pre.shape[-1]), per_layer.shape[1])
        values, indices = per_layer.topk(keep, dim=-1)
        kept = torch.zeros_like(per_layer).scatter(-1, indices, values.relu())
        if self.training:
            self._track_threshold(values)
        tokens = per_layer.shape[1] // pre.shape[-1]
        return kept.reshape(pre.shape[-2], tokens, pre.shape[-1]).transpose(0, 1).reshape(pre.shape)

    def _track_threshold(self, kept: Tensor) -> None:
        """Each layer's inference threshold tracks the smallest positive activation BatchTopK kept there."""
        self.track_smallest_kept(torch.where(kept > 0, kept, torch.inf).amin(-1))

    @torch.no_grad()
    def track_smallest_kept(self, smallest: Tensor) -> None:
        """Move each layer's threshold towards `smallest` `(n_layers,)`, the smallest positive activation kept there
        in this batch (inf: none): set on the first batch, then an exponential moving average."""
        smallest = smallest.to(self.threshold.dtype)
        seen = torch.isfinite(smallest)
        fresh = seen & (self.threshold < 0)
        self.threshold.copy_(torch.where(fresh, smallest, self.threshold))
        tracked = seen & ~fresh
        ema = self.threshold.lerp(smallest, 1 - BATCHTOPK_THRESHOLD_DECAY)
        self.threshold.copy_(torch.where(tracked, ema, self.threshold))

    def encode(self, x: Tensor) -> Tensor:
        return self.activate(self.pre_activation(x))

    def decode(self, z: Tensor) -> Tensor:
        """`(..., n_layers, d_out)`: layer l' predicted from the latents of layers 0..l', as one matmul per predicted
        layer over the latents of every layer that writes to it (on the CPU this ran 2.5 times faster than one
        matmul per writing layer, whose `(tokens, n_layers - l, d_out)` partial sums cost more to add than to make)."""
        return self.decode_without_bias(z) + self.b_dec.to(z.dtype)

    def decode_without_bias(self, z: Tensor) -> Tensor:
        """`decode` before b_dec is added: a sum over latents, so a feature shard decodes its own latents
        (`z.shape[-1]` of them per layer, its rows of each decoder) and the shards' parts add up."""
        L, n = self.config.n_layers, z.shape[-1]  # noqa: N806
        flat = z.reshape(-1, L * n)  # (tokens, n_layers * num_latents), layer-major
        predictions = []
        for layer in range(L):
            into = torch.cat([self.W_dec[source][:, layer - source] for source in range(layer + 1)])  # ((l+1) n, d)
            predictions.append(flat[:, : (layer + 1) * n] @ into.to(z.dtype))  # (tokens, d_out)
        return torch.stack(predictions, dim=1).reshape(*z.shape[:-1], self.config.d_out)  # (..., n_layers, d_out)

    def decoder_norms(self) -> Tensor:
        """`(n_layers, num_latents)`: each latent's decoder norm over every layer it writes to."""
        return torch.stack([decoder.pow(2).sum((-2, -1)).sqrt() for decoder in self.W_dec])

    @torch.no_grad()
    def fold_activation_scale_(self, scale, output_scale=None) -> None:
        """Make a transcoder trained on `scale[l] * x[l]` to predict `output_scale[l] * y[l]` take raw x and predict
        raw y: each encoder absorbs its layer's input scale, each decoder and b_dec undo the scale of the layer they
        write to. The scales are one number for every layer, or one per layer; the latents are unchanged."""
        L = self.config.n_layers  # noqa: N806
        scale = torch.as_tensor(scale, dtype=self.W_enc.dtype, device=self.W_enc.device).expand(L)
        output_scale = scale if output_scale is None else output_scale
        output_scale = torch.as_tensor(output_scale, dtype=self.W_enc.dtype, device=self.W_enc.device).expand(L)
        self.W_enc.mul_(scale[:, None, None])
        self.b_dec.div_(output_scale[:, None])
        for layer, decoder in enumerate(self.W_dec):  # (num_latents, n_layers - l, d_out), into layers l..
            decoder.div_(output_scale[layer:, None])

    def forward(self, x: Tensor, target: Tensor | None = None, *, return_loss: bool | None = None,
                sparsity_coefficient: float | None = None) -> CltOutput:  # fmt: skip
        """
        Encode every layer's MLP input and predict every layer's MLP output.

        Args:
            x (`torch.Tensor` of shape `(..., n_layers, d_in)`): the MLP inputs.
            target (`torch.Tensor` of shape `(..., n_layers, d_out)`, *optional*): the MLP outputs; needed for the
                loss.
            return_loss (`bool`, *optional*): compute the training loss; defaults to `self.training`.
            sparsity_coefficient (`float`, *optional*): the tanh penalty's λ for this call (a training schedule's
                warm-up); `config.sparsity_coefficient` by default.
        """
        cfg = self.config
        return_loss = self.training if return_loss is None else return_loss
        pre = self.pre_activation(x)
        z = self.activate(pre)
        prediction = self.decode(z)
        active = z != 0
        l0 = active.sum(-1).float().mean()
        counts = active.reshape(-1, cfg.n_layers, cfg.num_latents).sum(0)  # (n_layers, num_latents)
        if not return_loss:
            return CltOutput(reconstruction=prediction, latents=z, l0=l0, latent_counts=counts)
        if target is None:
            raise HookpointError(
                f"The loss of a cross-layer transcoder compares its prediction with every layer's MLP output: pass "
                f"`target` of shape {tuple(x.shape[:-1]) + (cfg.d_out,)}, or call with `return_loss=False`."
            )
        self._check(target, cfg.d_out, "target")
        losses = self.losses(pre, z, prediction, target, sparsity_coefficient)
        return CltOutput(reconstruction=prediction, latents=z, l0=l0, latent_counts=counts, loss=sum(losses.values()),
                         **losses)  # fmt: skip

    def losses(self, pre: Tensor, z: Tensor, prediction: Tensor, target: Tensor, sparsity_coefficient=None,
               over_latents=lambda total: total) -> dict[str, Tensor]:  # fmt: skip
        """The training loss's terms: `mse_loss`, each layer's squared error over its target's variance summed over
        layers, and JumpReLU's `sparsity_loss` and `pre_act_loss` (Ameisen et al. 2025). The penalties are sums over
        latents; `over_latents` completes a sum over this model's latents (a feature shard's: the sum over shards)."""
        cfg = self.config
        flat_target = target.reshape(-1, cfg.n_layers, cfg.d_out)
        error = (prediction.reshape(flat_target.shape) - flat_target).pow(2).sum(-1).mean(0)  # (n_layers,)
        variance = (flat_target - flat_target.mean(0)).pow(2).sum(-1).mean(0).clamp_min(1e-12)  # (n_layers,)
        losses = {"mse_loss": (error / variance.detach()).sum()}
        if cfg.architecture == "jumprelu":
            norms = self.decoder_norms().to(z.dtype)  # (n_layers, num_latents)
            tokens = z.reshape(-1, cfg.n_layers, z.shape[-1])
            tanh = over_latents(torch.tanh(cfg.sparsity_scale * tokens * norms).sum((-2, -1)).mean())
            coefficient = cfg.sparsity_coefficient if sparsity_coefficient is None else sparsity_coefficient
            losses["sparsity_loss"] = coefficient * tanh
            below = (self.threshold.to(pre.dtype) - pre.reshape(tokens.shape)).relu()
            losses["pre_act_loss"] = cfg.pre_act_coefficient * over_latents((below * norms).sum((-2, -1)).mean())
        return losses

    def _check(self, tensor: Tensor, width: int, name: str) -> None:
        if tensor.ndim < 2 or tuple(tensor.shape[-2:]) != (self.config.n_layers, width):
            raise HookpointError(
                f"CltModel expects `{name}` of shape (..., n_layers={self.config.n_layers}, {width}), the layers "
                f"stacked on the second-to-last axis; got shape {tuple(tensor.shape)}."
            )
