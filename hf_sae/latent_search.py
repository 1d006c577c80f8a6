"""Find the latent for a concept: the SAE latents that fire on example texts of it and stay silent on counterexamples.

Each text is read as training blocks are (BOS prepended, BOS itself left out), and each latent's peak activation over
its tokens is taken; a latent's contrast is its mean peak over the positive texts less its mean peak over the
negative ones, in units of its robust peak where the feature metadata has one (so that a latent that always runs
high does not win by scale alone). Dense latents (firing on more than `interpretability.DENSE_FREQUENCY` of the
tokens) are left out by default: they separate two small sets of texts by chance, through position or common
tokens, and clamping one rarely steers.
"""

import math

import torch
from torch import nn

from .errors import ArgumentError, FeatureMetadataError
from .feature_store import FeatureMetadata
from .features import hookpoint_of
from .interpretability import DENSE_FREQUENCY
from .lm_forward import run_lm
from .modeling_sae import SaeModel


@torch.no_grad()
def peak_activations(model: nn.Module, tokenizer, sae: SaeModel, texts: list[str], hookpoint: str) -> torch.Tensor:
    """`(len(texts), num_latents)`: each latent's largest activation over each text's tokens (BOS left out)."""
    prefix = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
    peaks = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        input_ids = torch.tensor([prefix + ids], device=getattr(model, "device", None))
        acts = run_lm(model, [hookpoint], input_ids)[0][hookpoint][0, len(prefix) :]  # (tokens, d_in)
        peaks.append(sae.encode(acts.to(sae.device, sae.dtype)).amax(0).float().cpu())  # (num_latents,)
    return torch.stack(peaks)


def check_examples(texts, what: str) -> list[str]:
    """The non-blank texts of `texts` (a list of strings), or a clear error naming `what`."""
    if not isinstance(texts, list | tuple) or not all(isinstance(t, str) for t in texts):
        raise ArgumentError(f"{what} must be a list of texts; got {type(texts).__name__} {str(texts)[:80]!r}.")
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ArgumentError(f"Give at least one text in {what}, e.g. one sentence about the concept.")
    return texts


def find_latents(
    model: nn.Module,
    tokenizer,
    sae: SaeModel,
    positives: list[str],
    negatives: list[str],
    *,
    top: int = 10,
    include_dense: bool = False,
    features: FeatureMetadata | None = None,
    hookpoint: str | None = None,
) -> list[dict]:
    r"""
    The `top` latents by contrast between `positives` (texts of the concept) and `negatives` (texts without it), each
    `{"feature", "contrast", "positive", "negative", "dense", "label", "interpretability"}`: `positive` and
    `negative` are its mean peak activation on each set. Dense latents are left out unless `include_dense`; that
    needs the feature metadata (`features`, else the SAE's own), whose firing frequencies say which are dense.

    Example:

    ```python
    >>> find_latents(lm, tokenizer, sae, ["The Golden Gate Bridge", "cable cars in San Francisco"],
    ...              ["The Eiffel Tower", "a recipe for bread"], top=3)
    [{'feature': 4121, 'contrast': 1.9, 'positive': 7.2, 'negative': 0.1, 'dense': False, 'label': ..., ...}, ...]
    ```
    """
    positives, negatives = check_examples(positives, "positives"), check_examples(negatives, "negatives")
    if not isinstance(top, int) or top < 1:
        raise ArgumentError(f"top must be a positive whole number of latents; got {top!r}.")
    hookpoint = hookpoint_of(sae, hookpoint)
    if features is None:
        try:
            features = sae.features
        except (FeatureMetadataError, FileNotFoundError, TypeError):  # an SAE with no folder has none
            features = None
    stats = features.stats if features is not None else None
    frequency = torch.tensor(stats["frequency"].to_numpy()) if stats is not None else None
    if frequency is None and not include_dense:
        raise ArgumentError(
            "Leaving dense latents out needs the feature metadata (their firing frequencies): pass `features=` "
            "(collect them with `hf-sae features`), or `include_dense=True`."
        )
    positive = peak_activations(model, tokenizer, sae, positives, hookpoint).mean(0)  # (num_latents,)
    negative = peak_activations(model, tokenizer, sae, negatives, hookpoint).mean(0)
    scale = torch.ones_like(positive)
    if stats is not None and "robust_peak" in stats:
        peak = torch.tensor(stats["robust_peak"].to_numpy(), dtype=torch.float32)
        scale = torch.where(peak.isfinite() & (peak > 0), peak, 1.0)
    contrast = (positive - negative) / scale
    dense = frequency > DENSE_FREQUENCY if frequency is not None else torch.zeros_like(contrast, dtype=torch.bool)
    if not include_dense:
        contrast = contrast.masked_fill(dense, -math.inf)
    order = contrast.argsort(descending=True)
    found = [int(i) for i in order[: min(top, len(order))] if contrast[i] > 0]
    score = stats["interpretability"] if stats is not None and "interpretability" in stats else None
    return [
        {
            "feature": i,
            "contrast": float(contrast[i]),
            "positive": float(positive[i]),
            "negative": float(negative[i]),
            "dense": bool(dense[i]),
            "label": features.label(i) if features is not None else "",
            "interpretability": float(score[i]) if score is not None else None,
        }
        for i in found
    ]
