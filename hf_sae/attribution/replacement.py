"""The local replacement model of a causal LM on one prompt (Ameisen et al. 2025, "Circuit Tracing: Revealing
Computational Graphs in Language Models", transformer-circuits.pub/2025/attribution-graphs; the circuit-tracer
package, whose `attribute()` linearises the forward the same way).

The prompt's real forward is recorded once. The replacement then runs the same model with hooks that
- freeze every attention pattern: each layer's `q_proj` and `k_proj` outputs are replaced by the recorded ones,
  detached, so the softmax sees the real queries and keys and only the values carry gradients;
- freeze every RMSNorm's denominator: `weight * x * s`, with s = 1 / rms(x) recorded from the real forward;
- replace each MLP's output by `skip(x) + bias + terms`: a skip transcoder's linear skip term of the MLP input (the
  only path through an MLP that carries gradients, as circuit-tracer's `skip + (out - skip).detach()`), the
  decoder bias, and `terms`, what the active features and the error node write there. The error node of (layer,
  position) is the real MLP output less the transcoders' prediction, a constant, so the replacement reproduces the
  real logits. Position 0 (BOS) carries no feature or error node: its whole MLP output is a constant, in `bias`.

Under these freezes the model is affine in the embeddings and the `terms`, which is what makes the attribution
graph's edges direct effects that add up to each target's value (`tracing`).
"""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..errors import ArgumentError, HookpointError
from .transcoders import Transcoders, TranscoderSet

# Pre-norm decoders whose attention pattern is set by q_proj / k_proj and whose norms are RMSNorms (`weight * x /
# rms(x)`, no mean, no offset): freezing the patterns and the norms' denominators leaves them affine.
FREEZABLE = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3"}
NORM_TOLERANCE = 1e-4  # how far a norm may be from `weight * x / rms(x)` (relative) before it is refused


@dataclass(frozen=True)
class ModelSites:
    """The modules the replacement hooks: the embedding, per layer (q_proj, k_proj, the two norms, the MLP), and the
    final norm."""

    embed: nn.Module
    q_proj: list[nn.Module]
    k_proj: list[nn.Module]
    norms: list[nn.Module]  # every RMSNorm of the residual stream: two per layer, then the final one
    mlps: list[nn.Module]
    width: int

    @property
    def n_layers(self) -> int:
        return len(self.mlps)


def model_sites(model: nn.Module) -> ModelSites:
    """The sites to freeze, or an error naming the model class and what attribution needs of it."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    needs = (
        "attribution freezes attention patterns through each layer's `self_attn.q_proj` / `k_proj` and normalisation "
        "denominators of RMSNorms (`weight * x / rms(x)`), in a pre-norm decoder with `input_layernorm`, "
        "`post_attention_layernorm`, `mlp` per layer and a final `norm`"
    )
    if model_type not in FREEZABLE:
        raise ArgumentError(
            f"attribute() does not support {type(model).__name__} (model_type {model_type!r}): {needs}. Supported "
            f"families: {', '.join(FREEZABLE.values())}. Other norms (LayerNorm's mean, Gemma's 1 + weight, "
            "post-norms) or logit soft-capping are not frozen yet."
        )
    base = getattr(model, getattr(model, "base_model_prefix", "model"), None)
    if model.get_output_embeddings() is None or not hasattr(base, "layers"):
        raise ArgumentError(
            f"attribute() needs a causal LM with its head (e.g. {FREEZABLE[model_type]}ForCausalLM), to read the "
            f"logits; got {type(model).__name__}. Load it with `AutoModelForCausalLM`."
        )
    try:
        attn = [layer.self_attn for layer in base.layers]
        sites = ModelSites(
            embed=base.embed_tokens,
            q_proj=[a.q_proj for a in attn],
            k_proj=[a.k_proj for a in attn],
            norms=[n for layer in base.layers for n in (layer.input_layernorm, layer.post_attention_layernorm)]
            + [base.norm],
            mlps=[layer.mlp for layer in base.layers],
            width=config.get_text_config().hidden_size,
        )
    except AttributeError as error:
        raise ArgumentError(f"{type(model).__name__} lacks a module attribution needs ({error}): {needs}.") from None
    if bad := [type(n).__name__ for n in sites.norms if not hasattr(n, "variance_epsilon") or n.weight.ndim != 1]:
        raise ArgumentError(f"{type(model).__name__} has norms of class {bad[0]}, not RMSNorms: {needs}.")
    return sites


@dataclass
class Capture:
    """What one frozen forward saw: each layer's MLP input `(batch, seq, d)`, in the autograd graph."""

    mlp_in: list[Tensor | None] = field(default_factory=list)


class ReplacementModel:
    r"""
    The local replacement of `model` on one prompt: the real forward recorded, the transcoders' activations, and
    the hooks that freeze attention and norms and replace the MLPs.

    Attributes (all detached; `seq` is the prompt's length, L the layer count):
        input_ids `(seq,)`; real_logits `(seq, vocab)`, the real model's; embeddings `(seq, d)`;
        mlp_in, mlp_out `(L, seq, d)`, the real MLP inputs and outputs;
        pre_activations, activations `(L, seq, num_latents)`, the transcoders' (activations 0 at position 0);
        bias `(L, seq, d)`, the constant part of each MLP output (b_dec; the whole output less its skip term at 0);
        feature_out `(L, seq, d)`, what the active features write into each MLP output;
        errors `(L, seq, d)`, the error nodes, the real output less skip, bias and features (0 at position 0).

    Example:

    ```python
    >>> replacement = ReplacementModel(lm, {layer: transcoder, ...}, ids)  # or a CltModel
    >>> replacement.logits()  # the real logits again, through the frozen, linear replacement
    >>> with SaeHooks(lm, {"l1": transcoders[1]}).ablate([7], positions=[3]), replacement.frozen():
    ...     direct = lm(ids[None]).logits  # the direct effect of feature 7 at layer 1, position 3
    ```
    """

    def __init__(self, model: nn.Module, transcoders: Transcoders | TranscoderSet, input_ids: Tensor):
        self.model, self.sites = model, model_sites(model)
        if not isinstance(transcoders, TranscoderSet):
            transcoders = TranscoderSet.checked(transcoders, model, self.sites.mlps, self.sites.width)
        self.transcoders, self.input_ids = transcoders, torch.as_tensor(input_ids).reshape(-1)
        self._frozen: dict[nn.Module, Tensor] = {}  # q_proj / k_proj outputs and norm scales, each (1, seq, ·)
        self._record()
        self._split()

    @torch.no_grad()
    def _split(self) -> None:
        """Each MLP output as skip + bias + features + errors."""
        transcoders = self.transcoders
        self.pre_activations, self.activations = transcoders.encode(self.mlp_in)
        self.activations[:, 0] = 0  # BOS carries no feature nodes
        skips = [transcoders.skip(layer, x) for layer, x in enumerate(self.mlp_in)]
        skip = torch.stack([torch.zeros_like(x) if s is None else s for s, x in zip(skips, self.mlp_in)])
        self.bias = transcoders.b_dec.to(skip.dtype)[:, None].repeat(1, len(self.input_ids), 1)  # (L, seq, d)
        self.bias[:, 0] = self.mlp_out[:, 0] - skip[:, 0]
        self.feature_out = transcoders.decode_without_bias(self.activations).to(skip.dtype)
        self.errors = self.mlp_out - skip - self.bias - self.feature_out
        self.errors[:, 0] = 0

    @torch.no_grad()
    def _record(self) -> None:
        sites, frozen, mlp = self.sites, self._frozen, {}

        def keep_output(module, args, kwargs, output):
            frozen[module] = output.detach().clone()

        def keep_scale(module, args, kwargs, output):
            x = _hidden(args, kwargs).float()
            scale = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + module.variance_epsilon)
            expected = module.weight * (x * scale).to(output.dtype)
            if not torch.allclose(expected, output, rtol=NORM_TOLERANCE, atol=NORM_TOLERANCE * output.abs().max()):
                raise ArgumentError(
                    f"{type(module).__name__} in {type(self.model).__name__} does not compute `weight * x / rms(x)`, "
                    "so attribution cannot freeze its denominator. This architecture is not supported."
                )
            frozen[module] = scale

        def keep_mlp(module, args, kwargs, output):
            mlp[module] = (_hidden(args, kwargs).detach().clone(), output.detach().clone())

        def keep_embed(module, args, output):
            self.embeddings = output[0].detach().clone()

        hooks = [(m, keep_output) for m in sites.q_proj + sites.k_proj] + [(m, keep_scale) for m in sites.norms]
        hooks += [(m, keep_mlp) for m in sites.mlps]
        handles = [module.register_forward_hook(fn, with_kwargs=True) for module, fn in hooks]
        handles.append(sites.embed.register_forward_hook(keep_embed))
        try:
            ids = self.input_ids[None].to(self.model.device)
            self.real_logits = self.model(input_ids=ids, use_cache=False).logits[0].detach()  # (seq, vocab)
        finally:
            for handle in handles:
                handle.remove()
        self.mlp_in = torch.stack([mlp[m][0][0] for m in sites.mlps])  # (L, seq, d)
        self.mlp_out = torch.stack([mlp[m][1][0] for m in sites.mlps])

    # ---- the replacement forward -----------------------------------------------------------------------------------

    @contextmanager
    def frozen(self, terms: Sequence[Tensor] | None = None, embeddings: Tensor | None = None) -> Iterator[Capture]:
        """
        Hooks that turn `self.model` into the replacement on this prompt, for a batch of copies of it.

        Args:
            terms (`Sequence[Tensor]`, *optional*): per layer, `(batch or 1, seq, d)`, what the feature and error
                nodes write into that MLP's output; `features + errors` (the real output) by default.
            embeddings (`Tensor`, *optional*): `(batch or 1, seq, d)` in place of the token embeddings.

        Other hooks on the MLPs (`SaeHooks` steering a transcoder, say) see the replaced output when they were
        attached before this context was entered.
        """
        sites, capture = self.sites, Capture([None] * self.sites.n_layers)
        terms = list(self.feature_out + self.errors) if terms is None else list(terms)
        if len(terms) != sites.n_layers:
            raise ArgumentError(f"`terms` must hold one tensor per layer ({sites.n_layers}); got {len(terms)}.")

        def frozen_output(module, args, kwargs, output):
            return self._batch(self._frozen[module], output).to(output.dtype)

        def frozen_norm(module, args, kwargs, output):
            x = _hidden(args, kwargs)
            scale = self._batch(self._frozen[module], x)  # float32, as RMSNorm computes it; float64 stays float64
            return module.weight * (x.to(torch.promote_types(x.dtype, torch.float32)) * scale).to(x.dtype)

        def replaced_mlp(layer: int):
            def hook(module, args, kwargs, output):
                x = _hidden(args, kwargs)
                capture.mlp_in[layer] = x
                out = self._batch(self.bias[layer], x) + self._batch(terms[layer], x)
                skip = self.transcoders.skip(layer, x)
                return (out if skip is None else out + skip).to(output.dtype)

            return hook

        def new_embeddings(module, args, kwargs, output):
            return self._batch(embeddings, output).to(output.dtype)

        hooks = [(m, frozen_output) for m in sites.q_proj + sites.k_proj] + [(m, frozen_norm) for m in sites.norms]
        hooks += [(m, replaced_mlp(layer)) for layer, m in enumerate(sites.mlps)]
        hooks += [(sites.embed, new_embeddings)] if embeddings is not None else []
        handles = [module.register_forward_hook(fn, with_kwargs=True, prepend=True) for module, fn in hooks]
        try:
            yield capture
        finally:
            for handle in handles:
                handle.remove()

    def _batch(self, value: Tensor, like: Tensor) -> Tensor:
        """`value` `(seq, ·)` or `(batch or 1, seq, ·)` broadcast to the batch of `like`, on its device."""
        seq = len(self.input_ids)
        if like.ndim != 3 or like.shape[1] != seq:
            raise HookpointError(
                f"This replacement model is frozen on a prompt of {seq} tokens; the forward runs on shape "
                f"{tuple(like.shape)}. Run it on copies of that prompt: `input_ids` of shape (batch, {seq})."
            )
        value = value if value.ndim == 3 else value[None]
        return value.to(like.device).expand(like.shape[0], *value.shape[1:])

    def logits(self, terms: Sequence[Tensor] | None = None, embeddings: Tensor | None = None) -> Tensor:
        """`(seq, vocab)`: the replacement's logits, with the real error nodes unless `terms` says otherwise."""
        with torch.no_grad(), self.frozen(terms, embeddings):
            return self.model(input_ids=self.input_ids[None].to(self.model.device), use_cache=False).logits[0]

    def terms_without(self, nodes: Sequence[tuple[int, int, int]]) -> list[Tensor]:
        """Per layer `(seq, d)`: what the nodes write into the MLP outputs with the given features, as (layer,
        position, feature), switched off (their activation set to 0), the rest of the graph as it is."""
        activations = self.activations.clone()
        for layer, position, feature in nodes:
            activations[layer, position, feature] = 0
        features = self.transcoders.decode_without_bias(activations).to(self.feature_out.dtype)
        return list(features + self.errors)


def _hidden(args: tuple, kwargs: dict) -> Tensor:
    return args[0] if args else kwargs["hidden_states"]
