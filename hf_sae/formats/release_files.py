"""The SAEs that some releases of SAELens' registry keep as single files of their own layout, read as SAELens' loaders
map them (`sae_lens/loading/pretrained_sae_loaders.py`, 6.54.12). The files do not say where an SAE reads, nor
always its k: the release does (its repo name, the registry's hookpoint and scale), so these are read by release.

- `qwen_scope` (Qwen Scope): `layer{L}.sae.pt` with W_enc (d_sae, d_in), W_dec (d_in, d_sae), b_enc, b_dec; TopK, k
  in the repo name (`SAE-Res-Qwen3-1.7B-Base-W32K-L0_50`: k 50); the encoder reads x as it is.
- `goodfire` (Goodfire's Llama SAEs): one `.pt` / `.pth` with `encoder_linear` and `decoder_linear` as nn.Linear
  (out, in); ReLU, the encoder reads x as it is.
- `deepseek_r1` (qresearch's DeepSeek-R1-Distill SAE): one `.pt` with `encoder` and `decoder` as nn.Linear; the same.
- `hook_z` (Kissane et al. 2024, attention-output SAEs): `<name>.pt` (W_enc (d_in, d_sae), W_dec, b_enc, b_dec)
  beside `<name>_cfg.json` (`act_size`, `dict_size`, `act_name`); ReLU on the heads' concatenated outputs (the
  input of the attention's output projection), b_dec subtracted first.
- `circuit_tracer_layer` (mwhanna's Qwen 3 transcoders): circuit-tracer's `layer_{L}.safetensors`, from the MLP's
  input to its output.
- `llama_scope_r1` (Llama Scope R1 Distill, OpenMOSS): a folder of config.json and sae_weights.safetensors with
  encoder and decoder as nn.Linear and `log_jumprelu_threshold`; trained on activations scaled by the registry's
  `norm_scaling_factor`, which is folded in.

Torch files are read with `torch.load(weights_only=True)`: tensors only, never code.
"""

import re
from pathlib import Path
from typing import Any

from torch import Tensor

from ..configuration_sae import SaeConfig
from ..errors import FileFormatError, SaeConfigError
from ..layout import read_json
from . import names
from .circuit_tracer import circuit_tracer_layer
from .tensors import config_of, fold_input_scale, load_safetensors, load_torch_file, nonnegative, take

_QWEN_SCOPE_K = re.compile(r"SAE-Res-.+-W\d+K-L0_(\d+)")


def release_files(fmt: str, path: str) -> list[str]:
    """The repo files that the SAE at `path` of a release in format `fmt` needs."""
    if fmt == "hook_z":
        return [path, path.split(".pt")[0] + "_cfg.json"]
    if fmt == "llama_scope_r1":
        return [f"{path}/config.json", f"{path}/sae_weights.safetensors"]
    return [path]


def _linear_pair(raw: dict[str, Tensor], src: Path, encoder: str, decoder: str) -> dict[str, Tensor]:
    """An encoder and a decoder stored as nn.Linear (weights (out, in)) with their biases."""
    n, d_in = raw[f"{encoder}.weight"].shape if f"{encoder}.weight" in raw else (0, 0)
    return {
        "W_enc": take(raw, f"{encoder}.weight", (n, d_in), src),
        "b_enc": take(raw, f"{encoder}.bias", (n,), src),
        "W_dec": take(raw, f"{decoder}.weight", (d_in, n), src).T,
        "b_dec": take(raw, f"{decoder}.bias", (d_in,), src),
    }


def _qwen_scope(src: Path, repo_id: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    match = _QWEN_SCOPE_K.search(repo_id)
    if match is None:
        raise SaeConfigError(
            f"{src}: a Qwen Scope SAE's k is in its repo name (Qwen/SAE-Res-Qwen3-1.7B-Base-W32K-L0_50 has k 50), but "
            f"{repo_id!r} does not have that form. Load it by its release name (`qwen-scope-3-1.7b-base-w32k-l50`)."
        )
    raw = load_torch_file(src)
    n, d_in = raw["W_enc"].shape if "W_enc" in raw else (0, 0)
    tensors = {
        "W_enc": take(raw, "W_enc", (n, d_in), src),
        "W_dec": take(raw, "W_dec", (d_in, n), src).T,
        "b_enc": take(raw, "b_enc", (n,), src),
        "b_dec": take(raw, "b_dec", (d_in,), src),
    }
    return tensors, {"architecture": "topk", "k": int(match[1]), "apply_b_dec_to_input": False}


def _hook_z(src: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    cfg_path = src.with_name(src.name.split(".pt")[0] + "_cfg.json")
    cfg = read_json(cfg_path)
    d_in, n = cfg["act_size"], cfg["dict_size"]
    raw = load_torch_file(src)
    tensors = {
        "W_enc": take(raw, "W_enc", (d_in, n), src).T,
        "W_dec": take(raw, "W_dec", (n, d_in), src),
        "b_enc": take(raw, "b_enc", (n,), src),
        "b_dec": take(raw, "b_dec", (d_in,), src),
    }
    hook = names.transformer_lens_to_module(cfg["act_name"], "gpt2")
    return tensors, {"architecture": "relu", "apply_b_dec_to_input": True, "hookpoint": hook}


def _transcoder_layer(src: Path, model: str | None) -> tuple[dict[str, Tensor], dict[str, Any]]:
    layer = re.search(r"layer_(\d+)", src.name)
    if layer is None:
        raise SaeConfigError(
            f"{src}: a per-layer transcoder's file is named layer_{{L}}.safetensors; this one is not."
        )
    tensors = circuit_tracer_layer(load_safetensors(src), src)
    fields = {
        "architecture": "jumprelu" if "threshold" in tensors else "relu",
        "apply_b_dec_to_input": False,
        "d_out": tensors["b_dec"].shape[0],
        "skip_connection": "W_skip" in tensors,
        "hookpoint": names.transformer_lens_to_module(f"blocks.{layer[1]}.ln2.hook_normalized", model),
        "output_hookpoint": names.transformer_lens_to_module(f"blocks.{layer[1]}.hook_mlp_out", model),
    }
    return tensors, fields


def _llama_scope_r1(folder: Path, scale: float | None) -> tuple[dict[str, Tensor], dict[str, Any]]:
    if scale is None:
        raise SaeConfigError(
            f"{folder}: Llama Scope R1 SAEs were trained on activations scaled by a constant that only the release's "
            "registry entry holds (`norm_scaling_factor`). Load it by its release name (`llama_scope_r1_distill`)."
        )
    cfg = read_json(folder / "config.json")
    src = folder / "sae_weights.safetensors"
    raw = load_safetensors(src)
    tensors = _linear_pair(raw, src, "encoder", "decoder")
    n, d_in = tensors["W_enc"].shape
    if (d_in, n) != (cfg["d_model"], cfg["d_model"] * cfg["expansion_factor"]):
        raise SaeConfigError(
            f"{src} holds an SAE of d_in {d_in} and {n} latents, but {folder / 'config.json'} says d_model "
            f"{cfg['d_model']} x expansion_factor {cfg['expansion_factor']}. The files do not belong together."
        )
    tensors["threshold"] = nonnegative(take(raw, "log_jumprelu_threshold", (n,), src).exp())
    fold_input_scale(tensors, scale)  # as SAELens' `fold_activation_norm_scaling_factor`
    return tensors, {"architecture": "jumprelu", "apply_b_dec_to_input": False}


def _read(src: Path, fmt: str, sae: dict[str, Any], repo_id: str, base_model: str | None):
    if fmt == "qwen_scope":
        return _qwen_scope(src, repo_id)
    if fmt in ("goodfire", "deepseek_r1"):
        prefix = "encoder_linear" if fmt == "goodfire" else "encoder"
        tensors = _linear_pair(load_torch_file(src), src, prefix, prefix.replace("encoder", "decoder"))
        return tensors, {"architecture": "relu", "apply_b_dec_to_input": False}
    if fmt == "hook_z":
        return _hook_z(src)
    if fmt == "circuit_tracer_layer":
        return _transcoder_layer(src, base_model)
    if fmt == "llama_scope_r1":
        return _llama_scope_r1(src, sae.get("scale"))
    raise SaeConfigError(f"{src}: hf_sae reads release files of the formats {FILE_FORMATS}, not {fmt!r}.")


def read_release_file(
    root: Path, fmt: str, path: str, sae: dict[str, Any], repo_id: str, base_model: str | None
) -> tuple[SaeConfig, dict[str, Tensor]]:
    """The config and tensors of the SAE at `path` (under `root`, where the repo's files were downloaded) of a release
    in format `fmt`; `sae` is the registry's entry for it (`hookpoint`, `scale`)."""
    try:
        tensors, fields = _read(root / path, fmt, sae, repo_id, base_model)
    except KeyError as error:  # a JSON file without a setting its loader reads
        raise FileFormatError(
            f"{root / path}: the files of this {fmt} SAE lack the setting {error.args[0]!r}. They are incomplete or "
            "were edited: download them again."
        ) from None
    fields = {"hookpoint": sae.get("hookpoint"), **fields, "base_model_name_or_path": base_model}
    n, d_in = tensors["W_enc"].shape
    return config_of(d_in, n, **fields), tensors


FILE_FORMATS = ("qwen_scope", "goodfire", "deepseek_r1", "hook_z", "circuit_tracer_layer", "llama_scope_r1")
