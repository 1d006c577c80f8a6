"""circuit-tracer's transcoder folders in (0.5.0; Ameisen et al. 2025): a `transcoder_set` (config.yaml +
layer_{l}.safetensors, one transcoder per layer) becomes per-layer `SaeConfig`s and tensors, a
`cross_layer_transcoder` (config.yaml + W_enc_{l} / W_dec_{l}.safetensors) one `CltConfig` and its tensors.

JumpReLU keeps its threshold (circuit-tracer's rule pre · [pre > θ] is hf_sae's); ReLU is hf_sae's `relu`, and for a
cross-layer transcoder a JumpReLU with θ = 0, the same function. The MLP input and output hooks become
`model.layers.{l}.mlp.input` and `model.layers.{l}.mlp`.

Gemma Scope 2's layout (Google DeepMind 2025, as circuit-tracer 0.5.0 reads it): config.yaml lists one file per layer
under `transcoders`, each holding `w_enc (d, F)`, `w_dec`, `b_enc`, `b_dec`, `threshold` and optionally
`affine_skip_connection (d, d)` applied as x @ skip. A CLT's `w_dec (F, L, d)` writes into every layer; the writes
into earlier layers are dropped, as circuit-tracer drops them. Gemma 3's MLP output hook is after
`post_feedforward_layernorm`, so that module is the output hookpoint.
"""

from collections.abc import Iterable
from pathlib import Path

import torch
import yaml
from torch import Tensor

from ..configuration_clt import CltConfig
from ..configuration_sae import SaeConfig
from ..errors import FileFormatError, SaeConfigError, WeightsError
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
    """The `model_kind` config.yaml names, checked against the weights files beside it (or that it lists)."""
    config = read_config_yaml(folder)
    kind = config["model_kind"]
    if listed_files(folder, config) is None and not (folder / FIRST_FILES[kind]).is_file():
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


def listed_files(folder: Path, config: dict) -> list[Path] | None:
    """The weights files config.yaml lists under `transcoders` (layer by layer), or None where it lists none.
    circuit-tracer also takes hf:// addresses there; hf_sae reads only files inside the folder."""
    listed = config.get("transcoders")
    if listed is None:
        return None
    if not isinstance(listed, list) or not listed or not all(isinstance(entry, str) for entry in listed):
        raise FileFormatError(f"{folder / CONFIG_YAML} should list `transcoders` as file paths; got {listed!r}.")
    paths = []
    for entry in listed:
        path = (folder / entry).resolve()
        if entry.startswith("hf://") or folder.resolve() not in path.parents or path.suffix != ".safetensors":
            raise FileFormatError(
                f"{folder / CONFIG_YAML} lists {entry!r} under `transcoders`; hf_sae reads safetensors files inside "
                f"{folder}, named relative to it. Download the files into that folder and list them by those names."
            )
        if not path.is_file():
            raise FileFormatError(f"{folder / CONFIG_YAML} lists {entry!r}, but {path} does not exist.")
        paths.append(path)
    return paths


def _sites(layer: int, gemma: bool = False) -> dict[str, str]:
    output = f"model.layers.{layer}.post_feedforward_layernorm" if gemma else f"model.layers.{layer}.mlp"
    return {"hookpoint": f"model.layers.{layer}.mlp{INPUT_SUFFIX}", "output_hookpoint": output}


def _layer_files(folder: Path, config: dict) -> list[Path]:
    if (listed := listed_files(folder, config)) is not None:
        return listed
    layers = sorted(int(p.stem.removeprefix("layer_")) for p in folder.glob("layer_*.safetensors"))
    if not layers or layers != list(range(len(layers))):
        raise SaeConfigError(
            f"{folder} should hold layer_0.safetensors .. layer_N.safetensors; it holds layers {layers}."
        )
    return [folder / f"layer_{layer}.safetensors" for layer in layers]


def circuit_tracer_layer(raw: dict[str, Tensor], path: Path) -> dict[str, Tensor]:
    """circuit-tracer's own per-layer file: `W_enc (F, d)`, `W_dec (F, d)`, JumpReLU where a threshold is present."""
    n, d_in = raw["W_enc"].shape if "W_enc" in raw else (0, 0)
    d_out = raw["b_dec"].shape[0] if "b_dec" in raw else 0
    tensors = {"W_enc": take(raw, "W_enc", (n, d_in), path), "W_dec": take(raw, "W_dec", (n, d_out), path),
               "b_enc": take(raw, "b_enc", (n,), path), "b_dec": take(raw, "b_dec", (d_out,), path)}  # fmt: skip
    if "activation_function.threshold" in raw:
        tensors["threshold"] = take(raw, "activation_function.threshold", (n,), path)
    if "W_skip" in raw:
        tensors["W_skip"] = take(raw, "W_skip", (d_out, d_in), path)
    return tensors


def gemma_scope_2_tensors(raw: dict[str, Tensor], path: Path) -> dict[str, Tensor]:
    """Gemma Scope 2's JumpReLU transcoder file, as circuit-tracer's `load_gemma_scope_2_transcoder` remaps it."""
    d_in, n = raw["w_enc"].shape
    d_out = raw["b_dec"].shape[0] if "b_dec" in raw else 0
    tensors = {"W_enc": take(raw, "w_enc", (d_in, n), path).T, "W_dec": take(raw, "w_dec", (n, d_out), path),
               "b_enc": take(raw, "b_enc", (n,), path), "b_dec": take(raw, "b_dec", (d_out,), path),
               "threshold": take(raw, "threshold", (n,), path)}  # fmt: skip
    if "affine_skip_connection" in raw:
        tensors["W_skip"] = take(raw, "affine_skip_connection", (d_in, d_out), path).T
    return tensors


def read_transcoder_set(folder: Path) -> dict[int, tuple[SaeConfig, dict[str, Tensor]]]:
    """`{layer: (config, tensors)}` of every `layer_{l}.safetensors` (layers 0.. without a gap), or of the files
    config.yaml lists under `transcoders` in layer order."""
    config = read_config_yaml(folder)
    result = {}
    for layer, path in enumerate(_layer_files(folder, config)):
        raw = load_safetensors(path)
        gemma = "w_enc" in raw  # Gemma Scope 2 spells its tensors in lower case
        tensors = gemma_scope_2_tensors(raw, path) if gemma else circuit_tracer_layer(raw, path)
        (n, d_in), d_out = tensors["W_enc"].shape, tensors["b_dec"].shape[0]
        jumprelu = "threshold" in tensors
        sae_config = SaeConfig(d_in=d_in, num_latents=n, architecture="jumprelu" if jumprelu else "relu", d_out=d_out,
                               apply_b_dec_to_input=False, skip_connection="W_skip" in tensors,
                               base_model_name_or_path=config.get("model_name"), **_sites(layer, gemma))  # fmt: skip
        result[layer] = (sae_config, tensors)
    return result


def read_cross_layer_transcoder(folder: Path) -> tuple[CltConfig, dict[str, Tensor]]:
    """The `CltConfig` and tensors (stacked encoders, per-layer decoders) of a cross-layer transcoder folder."""
    config = read_config_yaml(folder)
    if (listed := listed_files(folder, config)) is not None:
        return _gemma_scope_2_clt(listed, config)
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


def _gemma_scope_2_clt(paths: list[Path], config: dict) -> tuple[CltConfig, dict[str, Tensor]]:
    """Gemma Scope 2's CLT, one file per source layer, as circuit-tracer's `load_gemma_scope_2_clt` remaps it."""
    n_layers, files = len(paths), [load_safetensors(path) for path in paths]
    if "w_enc" not in files[0]:
        raise WeightsError(f"{paths[0]} lacks Gemma Scope 2's `w_enc`; it has {sorted(files[0])}.")
    d_in, n = files[0]["w_enc"].shape
    d_out = files[0]["b_dec"].shape[0] if "b_dec" in files[0] else 0
    if skipped := [path.name for path, raw in zip(paths, files) if "affine_skip_connection" in raw]:
        raise SaeConfigError(
            f"{skipped} hold an `affine_skip_connection`, which hf_sae's cross-layer transcoder cannot represent (it "
            "has no skip connection). Load a Gemma Scope 2 CLT without one, or its per-layer transcoders."
        )
    tensors = {
        "W_enc": torch.stack([take(raw, "w_enc", (d_in, n), path).T for path, raw in zip(paths, files)]),
        **{name: torch.stack([take(raw, name, shape, path) for path, raw in zip(paths, files)])
           for name, shape in (("b_enc", (n,)), ("b_dec", (d_out,)), ("threshold", (n,)))},
    }  # fmt: skip
    for layer, (path, raw) in enumerate(zip(paths, files)):
        tensors[f"W_dec.{layer}"] = take(raw, "w_dec", (n, n_layers, d_out), path)[:, layer:]  # later layers only
    clt_config = CltConfig(n_layers=n_layers, d_in=d_in, d_out=d_out, num_latents=n, architecture="jumprelu",
                           output_hookpoints=[_sites(layer, True)["output_hookpoint"] for layer in range(n_layers)],
                           base_model_name_or_path=config.get("model_name"))  # fmt: skip
    return clt_config, tensors
