"""The transcoders that stand in for every MLP of a model during attribution: a per-layer set of (skip) transcoders
(Dunefsky et al. 2024, "Transcoders Find Interpretable LLM Feature Circuits"; Paulo et al. 2025 on skip transcoders)
or a cross-layer transcoder (Ameisen et al. 2025, "Circuit Tracing: Revealing Computational Graphs in Language
Models"), behind one interface, checked against the model before any forward runs.

A per-layer transcoder of layer l reads `model.layers.{l}.mlp.input` and predicts `model.layers.{l}.mlp`; its features
write into that layer only. A CLT's layer-l features write into the MLP output of every layer l' >= l. Tensors
stack the layers first: `(n_layers, seq, width)`.
"""

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import ArgumentError, FeatureMetadataError, HookpointError
from ..hookpoints import INPUT_SUFFIX, resolve_hookpoints
from ..modeling_clt import CltModel
from ..modeling_sae import SaeModel

Transcoders = Mapping[int, SaeModel] | CltModel


@dataclass
class TranscoderSet:
    """Every layer's replacement: `per_layer[l]` (per-layer transcoders) or `clt`, exactly one of them."""

    per_layer: list[SaeModel] | None
    clt: CltModel | None
    n_layers: int

    @classmethod
    def checked(cls, transcoders: Transcoders, model: nn.Module, mlps: list[nn.Module], width: int) -> "TranscoderSet":
        """The set, or a clear error: a layer missing, a hookpoint the model lacks or that is not that layer's MLP
        input / output, a width that is not the residual stream's. `mlps[l]` is layer l's MLP module."""
        n_layers = len(mlps)
        if isinstance(transcoders, CltModel):
            cfg = transcoders.config
            if cfg.n_layers != n_layers:
                raise ArgumentError(
                    f"The cross-layer transcoder replaces {cfg.n_layers} layers, but {type(model).__name__} has "
                    f"{n_layers}: attribution replaces every MLP. Use a CLT trained on all {n_layers} layers."
                )
            pairs = [(layer, cfg.hookpoints[layer], cfg.output_hookpoints[layer]) for layer in range(n_layers)]
            _check_sites(model, mlps, pairs, "The cross-layer transcoder")
            _check_widths("The cross-layer transcoder", cfg.d_in, cfg.d_out, width)
            _check_device(model, [transcoders])
            return cls(None, transcoders.eval(), n_layers)
        if not isinstance(transcoders, Mapping) or not all(isinstance(t, SaeModel) for t in transcoders.values()):
            raise ArgumentError(
                "`transcoders` must be a dict {layer: SaeModel} of per-layer transcoders or a CltModel; got "
                f"{type(transcoders).__name__}. Load them with `hf_sae.load_saes(repo)` and key them by layer."
            )
        missing = [layer for layer in range(n_layers) if layer not in transcoders]
        extra = [key for key in transcoders if key not in range(n_layers)]
        if missing or extra:
            wrong = ([f"missing layers {missing}"] if missing else []) + ([f"unknown keys {extra}"] if extra else [])
            raise ArgumentError(
                f"Attribution replaces every MLP of {type(model).__name__}, layers 0..{n_layers - 1}, each by its "
                f"own transcoder; got {' and '.join(wrong)}. Pass `{{layer: transcoder}}` for every layer (train "
                "the missing ones with `hf-sae train --transcode`)."
            )
        saes = [transcoders[layer] for layer in range(n_layers)]
        for layer, sae in enumerate(saes):
            cfg = sae.config
            if not cfg.is_transcoder:
                raise ArgumentError(
                    f"The SAE given for layer {layer} reconstructs `{cfg.hookpoint}` (no `output_hookpoint`); "
                    "attribution needs transcoders that predict each MLP's output from its input."
                )
            if cfg.architecture == "gated":
                raise ArgumentError(
                    f"The transcoder of layer {layer} is gated: its activations come from a magnitude path, not the "
                    "encoder the graph differentiates. Use a relu, jumprelu, topk or batchtopk transcoder."
                )
            _check_widths(f"The transcoder of layer {layer}", cfg.d_in, cfg.d_out, width)
        _check_sites(model, mlps, [(i, s.config.hookpoint, s.config.output_hookpoint) for i, s in enumerate(saes)])
        _check_device(model, saes)
        return cls([sae.eval() for sae in saes], None, n_layers)

    # ---- what attribution reads --------------------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, mlp_in: Tensor) -> tuple[Tensor, Tensor]:
        """`(pre_activations, activations)`, each `(n_layers, seq, num_latents)`, from `mlp_in` `(n_layers, seq,
        d_in)`."""
        if self.clt is not None:
            x = mlp_in.transpose(0, 1).to(self.clt.dtype)  # (seq, n_layers, d_in)
            pre = self.clt.pre_activation(x)
            return pre.transpose(0, 1), self.clt.activate(pre).transpose(0, 1)
        pairs = [
            (sae.pre_activation(x.to(sae.dtype)), sae.encode(x.to(sae.dtype)))
            for sae, x in zip(self.per_layer, mlp_in)
        ]
        return torch.stack([pre for pre, _ in pairs]), torch.stack([z for _, z in pairs])

    @torch.no_grad()
    def decode_without_bias(self, z: Tensor) -> Tensor:
        """`(n_layers, seq, d_out)`: what the latents `z` `(n_layers, seq, num_latents)` write into each MLP output."""
        if self.clt is not None:
            out = self.clt.decode(z.transpose(0, 1).to(self.clt.dtype)).transpose(0, 1)
            return out - self.clt.b_dec[:, None]
        return torch.stack([zl.to(sae.dtype) @ sae.W_dec for sae, zl in zip(self.per_layer, z)])

    @property
    def b_dec(self) -> Tensor:
        """`(n_layers, d_out)`."""
        return (
            self.clt.b_dec.detach()
            if self.clt is not None
            else torch.stack([s.b_dec.detach() for s in self.per_layer])
        )

    def skip(self, layer: int, x: Tensor) -> Tensor | None:
        """Layer `layer`'s linear skip term of its input x, differentiable, or None (no skip connection)."""
        if self.clt is not None:
            return None
        sae = self.per_layer[layer]
        skip = sae.skip(x.to(sae.dtype))
        return None if skip is None else skip.to(x.dtype)

    @torch.no_grad()
    def encoder_rows(self, layer: int, features: Tensor) -> Tensor:
        """`(n, d_in)`: the encoder direction of each feature of `layer`, whose dot product with that layer's MLP
        input is the feature's pre-activation less a constant."""
        return (self.clt.W_enc[layer] if self.clt is not None else self.per_layer[layer].W_enc)[features]

    @torch.no_grad()
    def decoder_rows(self, layer: int, features: Tensor) -> Tensor:
        """`(n, reach, d_out)`: what each feature of `layer` writes, per unit of activation, into the MLP outputs of
        layers `layer .. layer + reach - 1` (reach 1 for a per-layer transcoder)."""
        if self.clt is not None:
            return self.clt.W_dec[layer][features]
        return self.per_layer[layer].W_dec[features][:, None]

    def label(self, layer: int, feature: int) -> str:
        """The feature's label: one a person set, else the automatic one, else an LLM's explanation; "" if none."""
        owner = self.clt if self.clt is not None else self.per_layer[layer]
        try:
            features = owner.features
            if features is not None and self.clt is not None:  # a CLT's metadata, one per layer
                features = features[layer]
        except (FeatureMetadataError, AttributeError, IndexError, KeyError, TypeError):
            return ""
        if features is None:
            return ""
        if label := features.labels.get(feature):
            return label
        try:
            label = features.label(feature)
        except (FeatureMetadataError, OSError, TypeError, KeyError, IndexError):
            label = ""
        explained = features.explanations.get("features", {}).get(str(feature), {})
        return label or explained.get("explanation", "") or ""


def _check_device(model: nn.Module, transcoders: list[nn.Module]) -> None:
    device = next(model.parameters()).device
    if elsewhere := sorted({str(t.device) for t in transcoders if t.device != device}):
        raise ArgumentError(
            f"The transcoders are on {elsewhere}, the model on {device}; attribution runs them together. Move them "
            "with `.to(model.device)`."
        )


def _check_widths(what: str, d_in: int, d_out: int, width: int) -> None:
    if (d_in, d_out) != (width, width):
        raise ArgumentError(
            f"{what} maps width d_in={d_in} to d_out={d_out}, but the model's MLPs read and write its residual "
            f"stream of width {width}. Use transcoders trained on this model."
        )


def _check_sites(model: nn.Module, mlps: list[nn.Module], pairs: list[tuple[int, str, str]],
                 owner: str = "The transcoder") -> None:  # fmt: skip
    """Each layer's input hookpoint must be that layer's MLP input and its output hookpoint the MLP's output."""
    for layer, source, target in pairs:
        what = f"{owner} of layer {layer}" if owner == "The transcoder" else f"{owner}'s layer {layer}"
        sites = resolve_hookpoints(model, [source, target])  # a name the model lacks fails here, with the closest
        reads, writes = sites[source], sites[target]
        if not (reads.module is mlps[layer] and reads.is_input) or writes.module is not mlps[layer] or writes.is_input:
            mlp = next(name for name, module in model.named_modules() if module is mlps[layer])
            raise HookpointError(
                f"{what} reads `{source}` and predicts `{target}`; attribution replaces layer {layer}'s MLP, so it "
                f"must read `{mlp}{INPUT_SUFFIX}` and predict `{mlp}`."
            )
