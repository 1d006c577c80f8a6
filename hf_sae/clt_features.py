"""Feature metadata of a cross-layer transcoder, one `FeatureMetadata` per layer, from one pass of the LM.

    <clt_dir>/features/layer_{l}/    as an SAE's features/ (`feature_store`), for the latents of layer l

Layer l's latents read `model.layers.{l}.mlp.input` through the CLT's own encoder and activation (JumpReLU, TopK per
token and layer, BatchTopK per layer), so each layer's statistics, contexts and labels come from the SAE machinery of
`features`. Every layer counts the same tokens: a token is an outlier when it is one at any layer's MLP input.

Logit effects and decoder neighbours read a latent's summed decoder, `sum_{l' >= l} W_dec[l][i, l' - l]`: everything
it writes into the residual stream, which (past later layers' attention and MLPs) is its direct effect on the logits,
as Ameisen et al. 2025 ("Circuit Tracing") attribute a CLT feature's direct output effect to all its decoders.
"""

from pathlib import Path
from types import SimpleNamespace

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .feature_directions import logit_effects
from .feature_store import LABELS, LAYER_FEATURES, FeatureMetadata, LayerFeatures
from .features import FeatureCollector, counted_mask, finished_metadata
from .layout import FEATURES, replace_folder, staging_folder
from .lm_forward import run_lm, special_token_ids
from .modeling_clt import CltModel
from .random_contexts import RandomContextSampler


def summed_decoder(clt: CltModel, layers: list[int]) -> SimpleNamespace:
    """The latents of `layers` as `logit_effects` and `decoder_neighbours` read an SAE: `W_dec` `(len(layers) *
    num_latents, d_out)`, layer by layer, the sum of what each latent writes into every layer it reaches."""
    W_dec = torch.cat([clt.W_dec[layer].detach().sum(1) for layer in layers])  # noqa: N806
    return SimpleNamespace(W_dec=W_dec, config=SimpleNamespace(d_in=clt.config.d_out, num_latents=len(W_dec)))


def clt_logit_effects(model: nn.Module, clt: CltModel, num_logits: int) -> list[dict[str, Tensor] | None]:
    """Every layer's `logit_effects`, from one pass over the unembedding for all layers."""
    effects = logit_effects(model, summed_decoder(clt, list(range(clt.config.n_layers))), num_logits)
    if effects is None:
        return [None] * clt.config.n_layers
    split = {key: value.split(clt.config.num_latents) for key, value in effects.items()}
    return [{key: parts[layer] for key, parts in split.items()} for layer in range(clt.config.n_layers)]


@torch.no_grad()
def collect_clt_feature_metadata(
    model: nn.Module,
    tokenizer,
    clt: CltModel,
    token_batches,
    *,
    max_tokens: int | None = None,
    top_n: int = 20,
    before: int = 10,
    after: int = 5,
    num_logits: int = 10,
    sample_size: int = 40,
    num_neighbours: int = 10,
    skip_after_special: bool = True,
    outlier_factor: float | None = 10.0,
    autocast_dtype: torch.dtype | None = None,
    settings: dict | None = None,
) -> LayerFeatures:
    r"""
    `{layer: FeatureMetadata}`: every layer's feature statistics, contexts, logit effects and labels, as
    `features.collect_feature_metadata` collects them for an SAE, from one LM forward per batch for all layers.

    Example:

    ```python
    >>> features = collect_clt_feature_metadata(lm, tokenizer, clt, batched(iter_blocks(blocks), 8), max_tokens=50_000)
    >>> save_clt_features(features, "runs/clt")  # runs/clt/features/layer_{l}/
    ```
    """
    cfg, hookpoints = clt.config, list(clt.config.hookpoints)
    collectors = [
        FeatureCollector(cfg.num_latents, top_n=top_n, sample_size=sample_size, before=before, after=after)
        for _ in range(cfg.n_layers)
    ]
    samplers = [RandomContextSampler(before + 1 + after) for _ in range(cfg.n_layers)]
    special, counted = special_token_ids(tokenizer), collectors[0]
    device, after_special = getattr(model, "device", torch.device("cpu")), 0
    with tqdm(total=max_tokens, unit="tok", desc="CLT feature statistics") as bar:
        for input_ids in token_batches:
            input_ids = input_ids.to(device)
            acts = run_lm(model, hookpoints, input_ids, autocast_dtype=autocast_dtype)[0]
            acts = [acts[hookpoint] for hookpoint in hookpoints]  # n_layers x (B, T, d_in)
            mask, follows = counted_mask(input_ids, acts, special, outlier_factor, skip_after_special,
                                         None if max_tokens is None else max_tokens - counted.tokens)  # fmt: skip
            after_special += follows
            latents = clt.encode(torch.stack(acts, dim=-2).to(clt.device, clt.dtype))  # (B, T, n_layers, num_latents)
            for layer, (collector, sampler) in enumerate(zip(collectors, samplers)):
                collector.update(latents[:, :, layer], input_ids, mask)
                sampler.update(latents[:, :, layer], input_ids)
            bar.update(int(mask.sum()))
            if max_tokens is not None and counted.tokens >= max_tokens:
                break
    common = {"top_n": top_n, "sample_size": sample_size, "context_before": before, "context_after": after,
              "outlier_factor": outlier_factor, "skip_after_special": skip_after_special,
              "after_special_tokens": after_special, "model_name_or_path": getattr(model, "name_or_path", None),
              "logit_effects": "W_U (g * c(sum_l' W_dec[l][i, l'])): the "
              "latent's decoders into every layer it writes, summed; final-norm gain g and centring c",
              **(settings or {})}  # fmt: skip
    effects = clt_logit_effects(model, clt, num_logits)
    return LayerFeatures({
        layer: finished_metadata(tokenizer, summed_decoder(clt, [layer]), collector, sampler, effects[layer],
                                 num_neighbours, {"hookpoint": hookpoints[layer], "layer": layer, **common})
        for layer, (collector, sampler) in enumerate(zip(collectors, samplers))
    })  # fmt: skip


def save_clt_features(features: LayerFeatures, clt_dir: str | Path) -> Path:
    """Write `<clt_dir>/features/layer_{l}/` for every layer at once: a temporary folder, then a rename, so what
    was there survives a failure. Labels people set in an earlier `features/` are kept, layer by layer."""
    folder = Path(clt_dir) / FEATURES
    for layer, metadata in features.items():
        earlier = folder / LAYER_FEATURES.format(layer)
        if (earlier / LABELS).is_file():
            metadata.labels = FeatureMetadata.load(earlier).labels
    with staging_folder(folder) as tmp:
        for layer, metadata in features.items():
            metadata.save_pretrained(tmp / LAYER_FEATURES.format(layer))
        replace_folder(tmp, folder)
    for layer, metadata in features.items():
        metadata.path = folder / LAYER_FEATURES.format(layer)
    features.path = folder
    return folder
