"""What each feature's decoder direction does: the tokens it promotes and suppresses through the unembedding
(`logit_effects`), and its nearest features by direction (`decoder_neighbours`).

Logit effects. Feature i writes the direction d = W_dec[i] into the residual stream. At a token with residual x the
final norm computes g * c(x) / rms(c(x)) + b, with c the mean-centring of LayerNorm (identity for RMSNorm); the
change it passes on for a small d is, to first order, g * c(d) / rms(c(x)). The factor 1 / rms(c(x)) is one positive
number per token, the same for every feature and vocabulary entry, so it rescales but never reorders; the bias b does
not depend on d. The logit effect is therefore W_U (g * c(d)): the norm's gain (read off the norm module itself, so
Gemma's 1 + weight is right too) and its centring are applied, its bias and the per-token scale are not.
"""

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers.utils import logging

from .modeling_sae import SaeModel

logger = logging.get_logger(__name__)

LOGIT_BINS = 32


def final_norm(model: nn.Module) -> nn.Module | None:
    """The norm between the last block and the unembedding (`model.norm`, `transformer.ln_f`, ...), if any."""
    base = getattr(model, "base_model", model)
    for name in ("norm", "ln_f", "final_layer_norm", "final_norm", "norm_f"):
        if isinstance(module := getattr(base, name, None), nn.Module):
            return module
    return None


@torch.no_grad()
def norm_gain(norm: nn.Module | None, width: int) -> tuple[Tensor, bool]:
    """(gain `(width,)`, whether it mean-centres) of an elementwise-affine norm, read by running it on probes."""
    if norm is None:
        return torch.ones(width), False
    param = next(norm.parameters(), torch.empty(0))
    run = lambda x: norm(x.to(param.device, param.dtype)[None])[0].float().cpu()  # noqa: E731
    probe = torch.tensor([(-1.0) ** i for i in range(width)])  # mean 0, no zero entry
    if width % 2:
        probe[:3] = torch.tensor([2.0, -1.0, -1.0])
    bias = run(torch.zeros(width))
    gain = (run(100 * probe) - bias) * probe.pow(2).mean().sqrt() / probe
    constant = run(torch.full((width,), 100.0)) - bias  # the gain for RMSNorm, zero for LayerNorm
    return gain, bool(constant.abs().max() < 1e-3 * gain.abs().max())


@torch.no_grad()
def logit_effects(
    model: nn.Module, sae: SaeModel, top: int = 10, chunk: int = 512, bins: int = LOGIT_BINS
) -> dict[str, Tensor] | None:
    r"""
    The tokens each feature's direction promotes and suppresses most: W_U (g * c(W_dec[i])), with the final norm's
    gain g and centring c (see the module docstring). Returns `promoted_ids`, `promoted_logits`, `suppressed_ids`,
    `suppressed_logits`, each `(num_latents, top)`, and the histogram of the effect over the whole vocabulary,
    `logit_histogram` `(num_latents, bins)` over equal-width bins from `logit_range[:, 0]` to `logit_range[:, 1]`
    (its minimum and maximum); or `None` when the SAE's width is not the unembedding's.
    """
    unembed = model.get_output_embeddings().weight  # (vocab, d_model)
    if unembed.shape[1] != sae.config.d_in:
        logger.info("No logit effects: the SAE's width %d is not the model's %d.", sae.config.d_in, unembed.shape[1])
        return None
    gain, centres = norm_gain(final_norm(model), sae.config.d_in)
    keys = ("promoted_ids", "promoted_logits", "suppressed_ids", "suppressed_logits", "logit_histogram", "logit_range")
    out: dict[str, list[Tensor]] = {key: [] for key in keys}
    unembed = unembed.detach().float().cpu()
    with tqdm(total=sae.config.num_latents, unit="feature", desc="Logit effects") as bar:
        for start in range(0, sae.config.num_latents, chunk):
            d = sae.W_dec[start : start + chunk].detach().float().cpu()  # (chunk, d_in)
            d = d - d.mean(-1, keepdim=True) if centres else d
            logits = (d * gain) @ unembed.T  # (chunk, vocab)
            for kind, largest in (("promoted", True), ("suppressed", False)):
                values, ids = logits.topk(min(top, logits.shape[1]), dim=1, largest=largest)
                out[f"{kind}_ids"].append(ids.int())
                out[f"{kind}_logits"].append(values)
            low, high = logits.min(1, keepdim=True).values, logits.max(1, keepdim=True).values  # (chunk, 1)
            which = ((logits - low) / (high - low).clamp(min=1e-12) * bins).long().clamp(0, bins - 1)
            out["logit_histogram"].append(
                torch.zeros(len(d), bins, dtype=torch.long).scatter_add_(1, which, torch.ones_like(which))
            )
            out["logit_range"].append(torch.cat([low, high], 1))
            bar.update(len(d))
    return {key: torch.cat(parts) for key, parts in out.items()}


@torch.no_grad()
def decoder_neighbours(W_dec: Tensor, top: int = 10, block_bytes: int = 2**28) -> tuple[Tensor, Tensor]:
    r"""
    Each feature's `top` nearest features by decoder-direction cosine: `(ids, cosines)`, each `(num_latents, top)`,
    most similar first, the feature itself left out. Rows go in blocks whose `(rows, num_latents)` similarities
    take at most `block_bytes`, and each block is divided by the norms rather than the decoder copied normalised, so
    a million latents need about 256 MB beyond an fp32 decoder itself.
    """
    directions = W_dec.detach().float()  # (L, d_in); no copy when the decoder is fp32 already
    inverse_norms = 1 / directions.norm(dim=1).clamp_min(1e-12)  # as nn.functional.normalize does
    num_latents = len(directions)
    top = min(top, num_latents - 1)
    rows = max(1, block_bytes // (4 * num_latents))
    ids, cosines = [], []
    for start in range(0, num_latents, rows):
        block = slice(start, start + rows)
        sims = directions[block] @ directions.T  # (rows, L)
        sims *= inverse_norms[block, None]
        sims *= inverse_norms
        own = torch.arange(len(sims), device=sims.device)
        sims[own, own + start] = -torch.inf
        values, index = sims.topk(top, dim=1)
        ids.append(index.int().cpu())
        cosines.append(values.cpu())
    return torch.cat(ids), torch.cat(cosines)
