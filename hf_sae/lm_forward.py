"""The frozen LM's forward as training, evaluation and feature collection all run it, and the one rule for which
of its tokens count.

The forward runs under `no_grad`, in bf16 autocast where the hardware multiplies bf16 faster (`lm_dtype="auto"`),
otherwise in fp32 with its linear layers on the fastest fp32 kernel (oneDNN on CPUs, `fast_linear`), and stops
after the deepest hookpoint unless the logits are wanted.

Which tokens count: not position 0 (on SmolLM2 the BOS residual norm is about 25,000 against a median of about 170),
not special tokens (`tokenizer.all_special_ids`), and not the rare tokens whose activation norm exceeds
`outlier_factor` times the median norm of the other counted tokens of the same block (about one token in 8,700 on
SmolLM2, which would otherwise dominate the reconstruction error). The median is taken per block, so that the rule,
and every number built on it, does not depend on how blocks are batched.

    LmReading           how a run reads the LM: device, blocks per forward, autocast dtype, outlier rule
    run_lm              one forward, stopped after the deepest hookpoint unless the logits are wanted
    counted_tokens      the tokens that count
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


@dataclass(frozen=True)
class LmReading:
    """How a run reads the LM (from `LanguageModelArguments.reading`): on which device, how many blocks per forward,
    in which autocast dtype (None: fp32), and the outlier rule of the tokens that count."""

    device: torch.device
    batch_size: int = 8
    autocast_dtype: torch.dtype | None = None
    outlier_factor: float | None = 10.0

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
    keep = ~torch.isin(input_ids, excluded_ids.to(input_ids.device))
    keep[:, 0] = False
    if outlier_factor is None:
        return keep, 0
    ordinary = torch.ones_like(keep)
    for acts in activations:
        norms = acts.float().norm(dim=-1)  # (batch, seq)
        median = norms.masked_fill(~keep, float("nan")).nanmedian(dim=-1, keepdim=True).values  # (batch, 1)
        ordinary &= norms <= outlier_factor * median
    return keep & ordinary, int((keep & ~ordinary).sum())


def special_token_ids(tokenizer) -> Tensor:
    """The ids that never count: the tokenizer's special tokens (BOS, EOS, padding, chat markers)."""
    return torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)


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
