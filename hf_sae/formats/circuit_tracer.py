"""circuit-tracer's transcoder folders in (0.5.0; Ameisen et al. 2025): a `transcoder_set` (config.yaml +
layer_{l}.safetensors, one transcoder per layer) becomes per-layer `SaeConfig`s and tensors, a
`cross_layer_transcoder` (config.yaml + W_enc_{l} / W_dec_{l}.safetensors) one `CltConfig` and its tensors.

JumpReLU keeps its threshold (circuit-tracer's rule pre · [pre > θ] is hf_sae's); ReLU is hf_sae's `relu`, and for a
cross-layer transcoder a JumpReLU with θ = 0, the same function. The MLP input and output hooks become
`model.layers.{l}.mlp.input` and `model.layers.{l}.mlp`.
"""

from collections.abc import Iterable
from pathlib import Path

import torch
import yaml
from torch import Tensor

from ..configuration_clt import CltConfig
from ..configuration_sae import SaeConfig
from ..errors import FileFormatError, SaeConfigError
from ..hookpoints import INPUT_SUFFIX
from .tensors import load_safetensors, take

CONFIG_YAML = "config.yaml"
KINDS = ("transcoder_set", "cross_layer_transcoder")
# the first weights file of each kind, beside config.yaml
FIRST_FILES = {"transcoder_set": "layer_0.safetensors", "cross_layer_transcoder": "W_enc_0.safetensors"}


def circuit_tracer_kind(files: Iterable[str]) -> str | None:
    """`transcoder_set` or `cross_layer_transcoder` when `files` (names at a folder's top) hold config.yaml and that
    kind's first weights file; None otherwise. config.yaml's `model_kind` is checked when the folder is read."""
    files = set(files)
    return next((kind for kind, first in FIRST_FILES.items() if {CONFIG_YAML, first} <= files), None)


def read_kind(folder: Path) -> str:
    """The `model_kind` config.yaml names, checked against the weights files beside it."""
    kind = read_config_yaml(folder)["model_kind"]
    if not (folder / FIRST_FILES[kind]).is_file():
        raise FileFormatError(
            f"{folder / CONFIG_YAML} names model_kind {kind!r}, but {folder} lacks {FIRST_FILES[kind]}: "
            "circuit-tracer keeps the weights beside config.yaml. Download or export the folder again."
        )
    return kind


def read_config_yaml(folder: Path) -> dict:
    """config.yaml as plain data (`yaml.safe_load`: no tags, so no code runs), checked for a known model kind."""
    try:
        config = yaml.safe_load((folder / CONFIG_YAML).read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise FileFormatError(f"{folder / CONFIG_YAML} is not valid YAML ({error}).") from None
    if not isinstance(config, dict) or config.get("model_kind") not in KINDS:
        kind = config.get("model_kind") if isinstance(config, dict) else config
        raise FileFormatError(
            f"{folder / CONFIG_YAML} should name `model_kind` {' or '.join(KINDS)}, as circuit-tracer writes it; got "
            f"{kind!r}."
        )
    return config


def _sites(layer: int) -> dict[str, str]:
    return {"hookpoint": f"model.layers.{layer}.mlp{INPUT_SUFFIX}", "output_hookpoint": f"model.layers.{layer}.mlp"}


def read_transcoder_set(folder: Path) -> dict[int, tuple[SaeConfig, dict[str, Tensor]]]:
    """`{layer: (config, tensors)}` of every `layer_{l}.safetensors`, layers 0.. without a gap."""
    config = read_config_yaml(folder)
    layers = sorted(int(p.stem.removeprefix("layer_")) for p in folder.glob("layer_*.safetensors"))
    if not layers or layers != list(range(len(layers))):
        raise SaeConfigError(
            f"{folder} should hold layer_0.safetensors .. layer_N.safetensors; it holds layers {layers}."
        )
    result = {}
    for layer in layers:
        path = folder / f"layer_{layer}.safetensors"
        raw = load_safetensors(path)
        n, d_in = raw["W_enc"].shape if "W_enc" in raw else (0, 0)
        d_out = raw["b_dec"].shape[0] if "b_dec" in raw else 0
        tensors = {"W_enc": take(raw, "W_enc", (n, d_in), path), "W_dec": take(raw, "W_dec", (n, d_out), path),
                   "b_enc": take(raw, "b_enc", (n,), path), "b_dec": take(raw, "b_dec", (d_out,), path)}  # fmt: skip
        jumprelu = "activation_function.threshold" in raw
        if jumprelu:
            tensors["threshold"] = take(raw, "activation_function.threshold", (n,), path)
        if "W_skip" in raw:
            tensors["W_skip"] = take(raw, "W_skip", (d_out, d_in), path)
        sae_config = SaeConfig(d_in=d_in, num_latents=n, architecture="jumprelu" if jumprelu else "relu", d_out=d_out,
                               apply_b_dec_to_input=False, skip_connection="W_skip" in raw,
                               base_model_name_or_path=config.get("model_name"), **_sites(layer))  # fmt: skip
        result[layer] = (sae_config, tensors)
    return result


def read_cross_layer_transcoder(folder: Path) -> tuple[CltConfig, dict[str, Tensor]]:
    """The `CltConfig` and tensors (stacked encoders, per-layer decoders) of a cross-layer transcoder folder."""
    config = read_config_yaml(folder)
    n_layers = len(list(folder.glob("W_enc_*.safetensors")))
    encoders = [load_safetensors(folder / f"W_enc_{layer}.safetensors") for layer in range(n_layers)]
    if not encoders:
        raise SaeConfigError(f"{folder} holds no W_enc_0.safetensors: it is no cross-layer transcoder.")
    n, d_in = encoders[0]["W_enc_0"].shape
    d_out = encoders[0]["b_dec_0"].shape[0]
    tensors: dict[str, Tensor] = {}
    for name, shape in (("W_enc", (n, d_in)), ("b_enc", (n,)), ("b_dec", (d_out,)), ("threshold", (n,))):
        if name == "threshold" and "threshold_0" not in encoders[0]:
            continue  # ReLU: a JumpReLU at θ = 0 below
        parts = [take(enc, f"{name}_{layer}", shape, folder / f"W_enc_{layer}.safetensors") for layer, enc in
                 enumerate(encoders)]  # fmt: skip
        tensors[name] = torch.stack(parts)
    for layer in range(n_layers):
        path = folder / f"W_dec_{layer}.safetensors"
        tensors[f"W_dec.{layer}"] = take(load_safetensors(path), f"W_dec_{layer}", (n, n_layers - layer, d_out), path)
    if "threshold" not in tensors:
        tensors["threshold"] = tensors["b_enc"].new_zeros(n_layers, n)
    clt_config = CltConfig(n_layers=n_layers, d_in=d_in, d_out=d_out, num_latents=n, architecture="jumprelu",
                           base_model_name_or_path=config.get("model_name"))  # fmt: skip
    return clt_config, tensors
