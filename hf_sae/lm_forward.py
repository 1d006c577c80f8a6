"""The frozen LM's forward as training, evaluation and feature collection all run it, and the one rule for which
of its tokens count.

The forward runs under `no_grad`, in bf16 autocast where the hardware multiplies bf16 faster (`lm_dtype="auto"`),
otherwise in fp32 with its linear layers on the fastest fp32 kernel (oneDNN on CPUs, `fast_linear`), and stops
after the deepest hookpoint unless the logits are wanted.

Which tokens count: not position 0 (on SmolLM2 the BOS residual norm is about 25,000 against a median of about 170),
not special tokens (`tokenizer.all_special_ids`), and not the rare tokens whose activation norm exceeds
`outlier_factor` times the median norm of the other counted tokens of the same block (about one token in 8,700 on
SmolLM2, which would otherwise dominate the reconstruction error). The median is taken per block, so that the rule,
and every number built on it, does not depend on how blocks are batched. Training, evaluation, feature collection and
`SaeHooks` all apply it through `countable` and `within_norm`; `SaeHooks` meets a block in pieces under `generate()`
(the prompt, then one token a step), so it judges each new token against the median of the block so far.

    LmReading           how a run reads the LM: device, blocks per forward, autocast dtype, outlier rule
    run_lm              one forward, stopped after the deepest hookpoint unless the logits are wanted
    counted_tokens      the tokens that count, in whole blocks
    countable           the rule's first part: not position 0, not a special token
    within_norm         its second part: not a norm outlier of its block
    special_token_ids   the ids that never count, from a tokenizer or else a model's config
    activation_widths   each hookpoint's width, from a tiny forward
"""

import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .errors import ArgumentError
from .fast_linear import fast_linears
from .hookpoints import capture_activations, register_activation_hook, resolve_hookpoints

OUTLIER_FACTOR = 10.0  # a token whose norm exceeds this times its block's median norm is left out


@dataclass(frozen=True)
class LmReading:
    """How a run reads the LM (from `LanguageModelArguments.reading`): on which device, how many blocks per forward,
    in which autocast dtype (None: fp32), and the outlier rule of the tokens that count."""

    device: torch.device
    batch_size: int = 8
    autocast_dtype: torch.dtype | None = None
    outlier_factor: float | None = OUTLIER_FACTOR

    @property
    def keywords(self) -> dict:
        """What `harvest`, `harvest_records`, `evaluate_saes` and `collect_feature_metadata` take of it."""
        return {"autocast_dtype": self.autocast_dtype, "outlier_factor": self.outlier_factor}


def lm_kernels(device: torch.device, dtype: torch.dtype | None):
    """Autocast to `dtype` on `device`; for `None` (fp32) on a CPU, the fastest fp32 linear kernel (`fast_linears`),
    which elsewhere would only add a Python call to every op."""
    if dtype is not None:
        return torch.autocast(device.type, dtype=dtype)
    return fast_linears() if device.type == "cpu" else contextlib.nullcontext()


@torch.no_grad()
def run_lm(
    model: nn.Module,
    hookpoints: Sequence[str],
    input_ids: Tensor,
    *,
    autocast_dtype: torch.dtype | None = None,
    with_logits: bool = False,
) -> tuple[dict[str, Tensor], Tensor | None]:
    """`({hookpoint: (batch, seq, width)}, logits or None)` of one forward on `input_ids` (batch, seq).

    Without logits the forward stops after the deepest hookpoint; with them it runs to the end and each activation
    is a copy, which the later layers cannot change.
    """
    device = input_ids.device
    with lm_kernels(device, autocast_dtype):
        if not with_logits:
            return capture_activations(model, hookpoints, input_ids), None
        captured: dict[str, Tensor] = {}
        sites = resolve_hookpoints(model, hookpoints)
        handles = [
            register_activation_hook(site, name, lambda x, name=name: captured.__setitem__(name, x.clone()))
            for name, site in sites.items()
        ]
        try:
            logits = model(input_ids=input_ids, use_cache=False).logits  # (batch, seq, vocab)
        finally:
            for handle in handles:
                handle.remove()
        return {name: captured[name] for name in hookpoints}, logits


def counted_tokens(
    input_ids: Tensor, activations: Iterable[Tensor], excluded_ids: Tensor, outlier_factor: float | None
) -> tuple[Tensor, int]:
    """`(mask, outliers)`: `(batch, seq)` True on the tokens that count (see the module docstring) at every one of
    `activations` (each `(batch, seq, width)`), and how many tokens were left out as norm outliers."""
    positions = torch.arange(input_ids.shape[-1], device=input_ids.device).expand_as(input_ids)  # (batch, seq)
    keep = countable(input_ids, positions, excluded_ids)
    if outlier_factor is None:
        return keep, 0
    ordinary = torch.ones_like(keep)
    for acts in activations:
        ordinary &= within_norm(keep, activation_norms(acts), outlier_factor)
    return keep & ordinary, int((keep & ~ordinary).sum())


def countable(input_ids: Tensor | None, positions: Tensor, excluded_ids: Tensor) -> Tensor:
    """`(batch, seq)` True on the tokens that may count before their norms are judged: not the first token of its
    sequence (`positions` count from 0 there; padding, counted negative, is left out too) and not one of
    `excluded_ids` (where the token ids are known)."""
    keep = positions > 0
    if input_ids is not None:
        keep &= ~torch.isin(input_ids, excluded_ids.to(input_ids.device))
    return keep


def activation_norms(acts: Tensor) -> Tensor:
    """`(batch, seq)` float32 norms of `(batch, seq, width)` activations, as the outlier rule reads them."""
    return acts.detach().float().norm(dim=-1)


def within_norm(keep: Tensor, norms: Tensor, outlier_factor: float, earlier: Tensor | None = None) -> Tensor:
    """`(batch, seq)` True where a token's norm (`norms`, `(batch, seq)`) is at most `outlier_factor` times the median
    norm of its block's countable tokens: those of `keep`, and, when the block comes in pieces (generation with a KV
    cache), `earlier` `(batch, t)`, the norms of its tokens before these, NaN at those not countable."""
    pool = norms.masked_fill(~keep, float("nan"))
    if earlier is not None:
        pool = torch.cat([earlier, pool], dim=-1)
    median = pool.nanmedian(dim=-1, keepdim=True).values  # (batch, 1); NaN (nothing within) where none is countable
    return norms <= outlier_factor * median


def special_token_ids(tokenizer=None, model: nn.Module | None = None) -> Tensor:
    """The ids that never count: the tokenizer's special tokens (BOS, EOS, padding, chat markers); without a
    tokenizer, the BOS, EOS and padding ids that `model`'s config and generation config name."""
    if tokenizer is not None:
        return torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
    ids = set()
    for config in (getattr(model, "config", None), getattr(model, "generation_config", None)):
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(config, key, None)
            ids.update(value if isinstance(value, list | tuple) else [] if value is None else [value])
    return torch.tensor(sorted(ids), dtype=torch.long)


def activation_widths(model, hookpoints: list[str], pairs: dict[str, str | None] | None = None) -> dict[str, int]:
    """Each hookpoint's activation width, from one stopped forward on two blocks of two tokens; each transcoder's
    two hookpoints of `pairs` (`{input: output}`) must hold the same tokens."""
    probe = torch.zeros(2, 2, dtype=torch.long, device=model.device)
    with torch.no_grad():
        shapes = {h: acts.shape for h, acts in capture_activations(model, hookpoints, probe).items()}
    for source, target in (pairs or {}).items():
        if target is not None and shapes[source][:-1] != shapes[target][:-1]:
            raise ArgumentError(
                f"A transcoder from `{source}` to `{target}` needs one activation per token at both, but on 2 blocks "
                f"of 2 tokens `{source}` gives shape {tuple(shapes[source])} and `{target}` {tuple(shapes[target])}. "
                "Pick two hookpoints that carry hidden states of the same tokens, e.g. an MLP's `.input` and the MLP."
            )
    return {h: shape[-1] for h, shape in shapes.items()}
