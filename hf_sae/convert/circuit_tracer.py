"""Transcoders out to circuit-tracer (0.5.0; Ameisen et al. 2025), whose `attribute()` and graph viewer read them:

    transcoder_set          config.yaml + layer_{l}.safetensors: W_enc (F, d), W_dec (F, d), b_enc (F), b_dec (d),
                            `activation_function.threshold` (F) for JumpReLU (else ReLU), W_skip (d, d) for a skip term
    cross_layer_transcoder  config.yaml + W_enc_{l}.safetensors (W_enc_l (F, d), b_enc_l, b_dec_l, threshold_l) and
                            W_dec_{l}.safetensors (W_dec_l (F, n_layers - l, d))

The folder is what circuit-tracer's cache holds (`$CIRCUIT_TRACER_CACHE_DIR/<owner>/<name>`) and what a Hub repo of
transcoders holds. Its loaders build JumpReLU or ReLU only: BatchTopK exports exactly as JumpReLU (its inference rule
is relu(pre) · [pre > θ] with θ >= 0), TopK cannot be expressed and is refused.
"""

from collections.abc import Mapping
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file

from ..errors import ArgumentError, SaeConfigError
from ..hookpoints import INPUT_SUFFIX
from ..layout import replace_folder, staging_folder
from ..modeling_clt import CltModel
from ..modeling_sae import SaeModel

CONFIG_YAML = "config.yaml"
# circuit-tracer's names of the MLP's input and output (TransformerLens' `blocks.L.mlp.hook_in` / `hook_out`).
FEATURE_HOOKS = {"feature_input_hook": "mlp.hook_in", "feature_output_hook": "mlp.hook_out"}
EXACT_AS_JUMPRELU = ("jumprelu", "batchtopk", "matryoshka_batchtopk")


def layer_sites(layer: int) -> tuple[str, str]:
    """hf_sae's module paths of circuit-tracer's `mlp.hook_in` and `mlp.hook_out` at `layer` (Llama layout)."""
    return f"model.layers.{layer}.mlp{INPUT_SUFFIX}", f"model.layers.{layer}.mlp"


def to_circuit_tracer(transcoders: Mapping[int, SaeModel] | CltModel, folder: str | Path, name: str | None = None):
    """Write per-layer transcoders `{layer: SaeModel}` (every layer from 0) or a `CltModel` to `folder` in
    circuit-tracer's format; the folder is built aside and swapped in whole."""
    folder = Path(folder)
    if isinstance(transcoders, CltModel):
        kind, files, base_model = "cross_layer_transcoder", _clt_files(transcoders), transcoders.config
    else:
        kind, files = "transcoder_set", _set_files(transcoders)
        base_model = next(iter(transcoders.values())).config
    base_model = base_model.base_model_name_or_path
    config = {"model_kind": kind, **FEATURE_HOOKS,
              "scan": name or folder.name} | ({"model_name": base_model} if base_model else {})  # fmt: skip
    with staging_folder(folder) as staging:
        for file_name, tensors in files.items():
            save_file({k: v.detach().to(torch.float32).contiguous() for k, v in tensors.items()}, staging / file_name)
        (staging / CONFIG_YAML).write_text(yaml.safe_dump(config, sort_keys=True))
        replace_folder(staging, folder)
    return folder


def _set_files(transcoders: Mapping[int, SaeModel]) -> dict[str, dict[str, torch.Tensor]]:
    layers = sorted(transcoders)
    if not layers or layers != list(range(len(layers))):
        raise ArgumentError(
            f"circuit-tracer needs one transcoder for every layer from 0; got layers {layers}. Train or load the "
            "missing ones (circuit-tracer replaces every MLP)."
        )
    files = {}
    for layer in layers:
        sae = transcoders[layer]
        cfg = sae.config
        if (cfg.hookpoint, cfg.output_hookpoint) != layer_sites(layer):
            raise SaeConfigError(
                f"The transcoder for layer {layer} maps {cfg.hookpoint!r} to {cfg.output_hookpoint!r}; circuit-tracer "
                f"reads each layer's MLP input and predicts its output: {layer_sites(layer)}."
            )
        tensors = {"W_enc": sae.W_enc, "W_dec": sae.W_dec, "b_enc": sae.b_enc, "b_dec": sae.b_dec}
        if cfg.apply_b_dec_to_input:  # circuit-tracer's encoder reads x as it is: fold the shift into the bias
            tensors["b_enc"] = sae.b_enc - sae.W_enc @ sae.b_dec
        if cfg.skip_connection:
            tensors["W_skip"] = sae.W_skip
        if threshold := _threshold(cfg.architecture, getattr(sae, "threshold", None), cfg.num_latents, layer):
            tensors["activation_function.threshold"] = threshold[0]
        files[f"layer_{layer}.safetensors"] = tensors
    return files


def _clt_files(clt: CltModel) -> dict[str, dict[str, torch.Tensor]]:
    cfg = clt.config
    files = {}
    for layer in range(cfg.n_layers):
        if (cfg.hookpoints[layer], cfg.output_hookpoints[layer]) != layer_sites(layer):
            raise SaeConfigError(
                f"The cross-layer transcoder's layer {layer} maps {cfg.hookpoints[layer]!r} to "
                f"{cfg.output_hookpoints[layer]!r}; circuit-tracer expects {layer_sites(layer)}."
            )
        threshold = clt.threshold[layer] if cfg.architecture != "topk" else None
        encoder = {f"W_enc_{layer}": clt.W_enc[layer], f"b_enc_{layer}": clt.b_enc[layer],
                   f"b_dec_{layer}": clt.b_dec[layer]}  # fmt: skip
        if found := _threshold(cfg.architecture, threshold, cfg.num_latents, layer):
            encoder[f"threshold_{layer}"] = found[0]
        files[f"W_enc_{layer}.safetensors"] = encoder
        files[f"W_dec_{layer}.safetensors"] = {f"W_dec_{layer}": clt.W_dec[layer]}
    return files


def _threshold(architecture: str, threshold, num_latents: int, layer: int) -> tuple[torch.Tensor] | None:
    """circuit-tracer's JumpReLU threshold, per latent, as a 1-tuple; None for ReLU."""
    if architecture == "relu":
        return None
    if architecture not in EXACT_AS_JUMPRELU:
        raise SaeConfigError(
            f"circuit-tracer's loaders build JumpReLU or ReLU transcoders only, so a {architecture!r} one (layer "
            f"{layer}) cannot be written exactly. Train jumprelu or batchtopk (whose threshold exports exactly), or "
            "export to SAELens, which reads TopK."
        )
    if architecture != "jumprelu" and bool((threshold < 0).any()):
        raise SaeConfigError(
            f"The BatchTopK transcoder of layer {layer} has no inference threshold yet (it is learned during "
            "training): train it, then export."
        )
    return (threshold.detach().expand(num_latents).clone(),)
