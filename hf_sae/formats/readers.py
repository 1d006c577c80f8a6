"""Readers of other projects' SAE folders (SAELens' are in `saelens`): each maps the tensors to hf_sae's layout
(`W_enc`, `W_dec` both (num_latents, d_in)), folds every scale so that the SAE takes raw activations, and refuses what
it cannot represent.

The formats, as their own save and load code writes and reads them:

- SAELens: in `saelens`.
- sparsify (`sparsify/sparse_coder.py`): cfg.json + sae.safetensors, `encoder.weight` (d_sae, d_in), `W_dec`
  (d_sae, d_in); the encoder reads x - b_dec unless the coder is a transcoder (`transcode`: it reads the module's
  input and predicts its output, adding `x @ W_skip.T` (d_in, d_in) with `skip_connection`).
- dictionary_learning (`dictionary_learning/dictionary.py`, `trainers/*.py`): ae.pt (a plain state dict) +
  config.json; biases and thresholds are already rescaled to raw activations by the training loop.
- Gemma Scope (Lieberum et al. 2024): params.npz, JumpReLU that does not subtract b_dec.
- Gemma Scope 2 (Google DeepMind 2025): params.safetensors (lower-case `w_enc` (d_in, d_sae)), the site a word of
  the folder's path; JumpReLU SAEs and transcoders.
- Llama Scope (He et al. 2024): hyperparams.json + checkpoints/final.safetensors, inputs scaled to norm sqrt(d_model)
  by a dataset-wide constant; mapped as SAELens' `llama_scope` loader maps it.
"""

import math
import re
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..configuration_sae import SaeConfig
from ..errors import SaeNotFoundError, WeightsError
from ..hookpoints import INPUT_SUFFIX
from ..layout import read_json
from . import names
from .circuit_tracer import gemma_scope_2_tensors
from .tensors import (
    Found,
    config_of,
    fold_input_scale,
    load_safetensors,
    load_torch_file,
    nonnegative,
    refuse,
    take,
)

# ---- sparsify -------------------------------------------------------------------------------------------------------


def _sparsify_hookpoint(folder: Path) -> tuple[str, str | None]:
    """The hookpoint is the folder's name (`layers.3`; `layers.3/seed1` for extra seeds); the run's config.json
    one level up names the base model."""
    hook_folder = folder.parent if re.fullmatch(r"seed\d+", folder.name) else folder
    run_config = hook_folder.parent / "config.json"
    model = read_json(run_config).get("model") if run_config.is_file() else None
    return names.relative_to_module(hook_folder.name, model), model


def describe_sparsify(folder: Path) -> Found:
    cfg = read_json(folder / "cfg.json")
    n = cfg.get("num_latents") or cfg.get("d_in", 0) * cfg.get("expansion_factor", 0)
    hookpoint = _sparsify_hookpoint(folder)[0]
    return Found("sparsify", hookpoint + INPUT_SUFFIX if cfg.get("transcode") else hookpoint, n or None)


def read_sparsify(folder: Path) -> tuple[SaeConfig, dict[str, Tensor]]:
    cfg = read_json(folder / "cfg.json")
    transcode, skip = bool(cfg.get("transcode")), bool(cfg.get("skip_connection"))
    if skip and not transcode:
        raise refuse(folder, "skip_connection", True, "a skip term (W_skip) applies to transcoders only, and "
                      "this coder reconstructs its input (transcode is false).")  # fmt: skip
    if cfg.get("activation", "topk") != "topk":
        raise refuse(folder, "activation", cfg["activation"], "hf_sae has top-k but not group-max selection.")
    d_in = cfg["d_in"]
    n = cfg.get("num_latents") or d_in * cfg["expansion_factor"]
    src = folder / "sae.safetensors"
    raw = load_safetensors(src)
    t = {
        "W_enc": take(raw, "encoder.weight", (n, d_in), src),
        "b_enc": take(raw, "encoder.bias", (n,), src),
        "W_dec": take(raw, "W_dec", (n, d_in), src),
        "b_dec": take(raw, "b_dec", (d_in,), src),
    }
    hookpoint, model = _sparsify_hookpoint(folder)
    fields: dict[str, Any] = {"hookpoint": hookpoint}
    if transcode:  # the module's input predicts its output; the encoder reads x as it is (SparseCoder.encode)
        fields = {"hookpoint": hookpoint + INPUT_SUFFIX, "output_hookpoint": hookpoint, "apply_b_dec_to_input": False}
    if skip:
        t["W_skip"] = take(raw, "W_skip", (d_in, d_in), src)
        fields["skip_connection"] = True
    # Otherwise the encoder subtracts b_dec although cfg.json does not say so (SparseCoder.encode).
    return config_of(d_in, n, "topk", k=cfg["k"], base_model_name_or_path=model, **fields), t


# ---- dictionary_learning --------------------------------------------------------------------------------------------


def _dictionary_learning_hookpoint(trainer: dict[str, Any], buffer: dict[str, Any]) -> str | None:
    model, layer = trainer.get("lm_name"), trainer.get("layer")
    name = trainer.get("submodule_name") or ""
    if layer is None:
        return None
    site = next((s for s in ("mlp_out", "attn_out") if name.startswith(s)), "resid_post")
    hook = names.transformer_lens_to_module(f"blocks.{layer}.hook_{site}", model)
    return hook + INPUT_SUFFIX if buffer.get("io") == "in" and site == "resid_post" else hook


def describe_dictionary_learning(folder: Path) -> Found:
    config = read_json(folder / "config.json") if (folder / "config.json").is_file() else {}
    trainer = config.get("trainer", {})
    hookpoint = _dictionary_learning_hookpoint(trainer, config.get("buffer", {}))
    return Found("dictionary_learning", hookpoint, trainer.get("dict_size"))


def read_dictionary_learning(folder: Path) -> tuple[SaeConfig, dict[str, Tensor]]:
    if not (folder / "config.json").is_file():
        raise SaeNotFoundError(
            f"{folder} has ae.pt but no config.json; dictionary_learning's trainer writes both. Copy the "
            "trainer's config.json beside ae.pt."
        )
    config = read_json(folder / "config.json")
    trainer = config.get("trainer", {})
    if (io := config.get("buffer", {}).get("io")) not in (None, "in", "out"):
        # 0.1.0's buffer can serve (input, output) pairs, but no dictionary class or trainer predicts one from the
        # other: what such a folder computes is not defined by the package.
        raise refuse(folder / "config.json", "buffer.io", io, "dictionary_learning's dictionaries reconstruct "
                      "their input; none reads one activation and predicts another.")  # fmt: skip
    dict_class, d_in, n = trainer.get("dict_class"), trainer.get("activation_dim"), trainer.get("dict_size")
    src = folder / "ae.pt"
    raw = load_torch_file(src)
    fields: dict[str, Any] = {"apply_b_dec_to_input": True}
    if dict_class == "AutoEncoder" and "bias" not in raw and "decoder.bias" in raw:
        dict_class = "AutoEncoderNew"  # its trainer (StandardTrainerAprilUpdate) writes dict_class "AutoEncoder"

    def linear() -> dict[str, Tensor]:  # nn.Linear weights are (out, in)
        return {
            "W_enc": take(raw, "encoder.weight", (n, d_in), src),
            "W_dec": take(raw, "decoder.weight", (d_in, n), src).T,
        }

    def parameters() -> dict[str, Tensor]:  # the W_enc (d_in, d_sae) classes
        return {"W_enc": take(raw, "W_enc", (d_in, n), src).T, "W_dec": take(raw, "W_dec", (n, d_in), src)}

    if dict_class == "AutoEncoder":
        t = linear() | {"b_enc": take(raw, "encoder.bias", (n,), src), "b_dec": take(raw, "bias", (d_in,), src)}
        arch = "relu"
    elif dict_class == "AutoEncoderNew":
        t = linear() | {
            "b_enc": take(raw, "encoder.bias", (n,), src),
            "b_dec": take(raw, "decoder.bias", (d_in,), src),
        }
        arch, fields["apply_b_dec_to_input"] = "relu", False
    elif dict_class in ("AutoEncoderTopK", "BatchTopKSAE", "MatryoshkaBatchTopKSAE"):
        t = parameters() if "W_enc" in raw else linear()
        t["b_enc"] = take(raw, "b_enc", (n,), src, "encoder.bias")
        t["b_dec"] = take(raw, "b_dec", (d_in,), src)
        fields["k"] = int(raw["k"]) if "k" in raw else int(trainer["k"])
        arch = {"AutoEncoderTopK": "topk", "BatchTopKSAE": "batchtopk"}.get(dict_class, "matryoshka_batchtopk")
        if arch != "topk":  # inference keeps relu(pre) above one global threshold (use_threshold=True)
            t["threshold"] = take(raw, "threshold", (), src)
        if arch == "matryoshka_batchtopk":  # the `group_sizes` buffer; the trainer's config.json has them too
            sizes = raw["group_sizes"].tolist() if "group_sizes" in raw else trainer.get("group_sizes")
            fields["matryoshka_group_sizes"] = sizes
    elif dict_class == "JumpReluAutoEncoder":
        t = parameters() | {"b_enc": take(raw, "b_enc", (n,), src), "b_dec": take(raw, "b_dec", (d_in,), src)}
        t["threshold"] = nonnegative(take(raw, "threshold", (n,), src))
        arch, fields["apply_b_dec_to_input"] = "jumprelu", False  # an attribute not saved, False by default
    elif dict_class == "GatedAutoEncoder":
        t = linear() | {"b_enc": take(raw, "gate_bias", (n,), src), "b_dec": take(raw, "decoder_bias", (d_in,), src)}
        t |= {"r_mag": take(raw, "r_mag", (n,), src), "b_mag": take(raw, "mag_bias", (n,), src)}
        arch = "gated"
    else:
        known = "AutoEncoder(New), AutoEncoderTopK, (Matryoshka)BatchTopKSAE, JumpReluAutoEncoder, GatedAutoEncoder"
        raise refuse(folder / "config.json", "trainer.dict_class", dict_class, f"hf_sae reads {known}.")
    hookpoint = _dictionary_learning_hookpoint(trainer, config.get("buffer", {}))
    model = trainer.get("lm_name")
    return config_of(d_in, n, arch, hookpoint=hookpoint, base_model_name_or_path=model, **fields), t


# ---- Gemma Scope and Llama Scope ------------------------------------------------------------------------------------

_WIDTH_WORD = re.compile(r"width_(\d+[km]?)(?![0-9a-z])")
_GEMMA_FOLDER = re.compile(r"layer_(?P<layer>\d+)/width_(?P<width>\d+[km]?)/average_l0_(?P<l0>\d+)")
_GEMMA_MODELS = re.compile(r"gemma-scope-(?P<size>\d+b)-(?P<kind>pt|it)-(?P<site>res|mlp|att|transcoders)")


def parse_width(text: str) -> int:
    """Gemma Scope's `16k` = 16384, `65k` = 65536, `1m` = 1048576: a rounded power of two."""
    if text[-1] not in "km":
        return int(text)
    return 2 ** round(math.log2(int(text[:-1]) * {"k": 1000, "m": 1000**2}[text[-1]]))


def gemma_scope_context(folder: Path, hint: str | None) -> tuple[str | None, str | None]:
    """(site, base model) from the release or repo name in `hint` or in the folder's path (the Hub cache keeps
    the repo name in it)."""
    match = _GEMMA_MODELS.search(hint or "") or _GEMMA_MODELS.search(str(folder).replace("--", "/"))
    if not match:
        return None, None
    model = f"google/gemma-2-{match['size']}" + ("-it" if match["kind"] == "it" else "")
    return match["site"], model


def describe_gemma_scope(folder: Path, hint: str | None = None) -> Found:
    match = _GEMMA_FOLDER.search(folder.as_posix())
    site, _ = gemma_scope_context(folder, hint)
    if not match:
        return Found("gemma_scope", None, None)
    hookpoint = names.gemma_scope_module(int(match["layer"]), site or "res")
    return Found("gemma_scope", hookpoint, parse_width(match["width"]), float(match["l0"]))


def read_gemma_scope(folder: Path, hint: str | None = None) -> tuple[SaeConfig, dict[str, Tensor]]:
    src = folder / "params.npz"
    raw = {("W_" + k[2:] if k.startswith("w_") else k): torch.from_numpy(v) for k, v in read_npz(src).items()}
    if "W_enc" not in raw:
        raise WeightsError(f"{src} lacks tensor 'W_enc'; it has {sorted(raw)}. It is not a Gemma Scope SAE.")
    d_in, n = raw["W_enc"].shape
    t = {
        "W_enc": take(raw, "W_enc", (d_in, n), src).T,
        "W_dec": take(raw, "W_dec", (n, d_in), src),
        "b_enc": take(raw, "b_enc", (n,), src),
        "b_dec": take(raw, "b_dec", (d_in,), src),
        "threshold": nonnegative(take(raw, "threshold", (n,), src)),
    }
    found = describe_gemma_scope(folder, hint)
    if found.hookpoint is None and "embedding" in folder.as_posix():
        raise refuse(folder, "folder", "embedding", "Gemma Scope's embedding SAEs read the scaled embedding, "
                      "which no module outputs.")  # fmt: skip
    site, model = gemma_scope_context(folder, hint)
    fields = {}
    if site == "transcoders":  # the MLP's normalised input predicts its output (SAELens `gemma_2_transcoder`)
        layer = int(_GEMMA_FOLDER.search(folder.as_posix())["layer"])
        fields = {"output_hookpoint": names.gemma_scope_module(layer, "mlp"), "d_out": d_in}
    config = config_of(d_in, n, "jumprelu", apply_b_dec_to_input=False, hookpoint=found.hookpoint,
                       base_model_name_or_path=model, **fields)  # fmt: skip
    return config, t


_GEMMA_SCOPE_2_REPO = re.compile(r"gemma-scope-2-(?P<size>\d+[mb])-(?P<kind>pt|it)")


def _gemma_scope_2_model(folder: Path, hint: str | None) -> str | None:
    """The base model, from config.json's `model_name` as SAELens normalises it, else from the repo name
    (google/gemma-scope-2-4b-pt reads google/gemma-3-4b-pt; the 270m pt model has no suffix)."""
    config = folder / "config.json"
    name = read_json(config).get("model_name") if config.is_file() else None
    if not name:
        match = _GEMMA_SCOPE_2_REPO.search(hint or "") or _GEMMA_SCOPE_2_REPO.search(str(folder).replace("--", "/"))
        name = match and f"gemma-3-{match['size']}-{match['kind']}"
    if not name:
        return None
    name = ("" if "google" in name else "google/") + name.replace("-v3", "-3")
    return name.replace("-pt", "") if "270m" in name else name


def describe_gemma_scope_2(folder: Path, hint: str | None = None) -> Found:
    hook = names.gemma_scope_2_hook(folder.as_posix())
    width = _WIDTH_WORD.search(folder.name)
    return Found("gemma_scope_2", hook and names.transformer_lens_to_module(hook, "gemma"),
                 width and parse_width(width[1]))  # fmt: skip


def read_gemma_scope_2(folder: Path, hint: str | None = None) -> tuple[SaeConfig, dict[str, Tensor]]:
    """Gemma Scope 2 (Google DeepMind 2025): `<site>/layer_L_width_W_l0_X/params.safetensors` (+ config.json), JumpReLU
    SAEs and transcoders, as SAELens' `gemma_3` loader reads them; the site is the folder's word."""
    config = folder / "config.json"
    if config.is_file() and (arch := read_json(config).get("architecture", "jump_relu")) != "jump_relu":
        raise refuse(config, "architecture", arch, "Gemma Scope 2's SAEs and transcoders are JumpReLU (jump_relu).")
    src = folder / "params.safetensors"
    t = gemma_scope_2_tensors(load_safetensors(src), src)
    t["threshold"] = nonnegative(t["threshold"])
    (n, d_in), d_out = t["W_enc"].shape, t["b_dec"].shape[0]
    hook = names.gemma_scope_2_hook(folder.as_posix())
    fields: dict[str, Any] = {"hookpoint": hook and names.transformer_lens_to_module(hook, "gemma")}
    if hook and hook.endswith("ln2.hook_normalized"):  # a transcoder: the MLP's output, after its norm
        output = names.transformer_lens_to_module(hook.split(".ln2")[0] + ".hook_mlp_out", "gemma")
        fields |= {"d_out": d_out, "skip_connection": "W_skip" in t, "output_hookpoint": output}
    elif d_out != d_in or "W_skip" in t:
        raise WeightsError(
            f"{src} holds a transcoder (b_dec of {d_out}, W_skip {'W_skip' in t}), but its folder {folder} names an "
            "SAE's site. Keep Gemma Scope 2's folder names: transcoders are under transcoder/ or transcoder_all/."
        )
    model = _gemma_scope_2_model(folder, hint)
    return config_of(d_in, n, "jumprelu", apply_b_dec_to_input=False, base_model_name_or_path=model, **fields), t


# Deflate expands at most about 1032 times: an entry claiming more than this is a damaged or forged header.
_MAX_DEFLATE_RATIO = 1100


def read_npz(src: Path) -> dict[str, np.ndarray]:
    """The arrays of an npz file, each entry's header checked against its size before anything is allocated (a
    forged shape would otherwise ask for terabytes); a damaged file is one clear error, never a traceback."""
    arrays = {}
    try:
        with zipfile.ZipFile(src) as archive:
            for entry in archive.infolist():
                with archive.open(entry) as file:
                    shape, dtype, order = _npy_header(file, entry)
                    count = math.prod(shape)
                    data = np.frombuffer(file.read(count * dtype.itemsize), dtype=dtype, count=count)
                arrays[entry.filename.removesuffix(".npy")] = data.reshape(shape, order=order).copy()
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise WeightsError(f"{src} is not a readable npz file of arrays ({error}). Download it again.") from None
    return arrays


def _npy_header(file, entry: zipfile.ZipInfo) -> tuple[tuple[int, ...], np.dtype, str]:
    """(shape, dtype, order) of an .npy entry, once its header agrees with the entry's size; object arrays
    (pickles) are refused."""
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    version = np.lib.format.read_magic(file)
    if version not in readers:
        raise ValueError(f"entry {entry.filename!r} is an .npy of version {version}, not 1.0 or 2.0")
    shape, fortran, dtype = readers[version](file)
    if dtype.hasobject:
        raise ValueError(f"entry {entry.filename!r} holds Python objects, which hf_sae never unpickles")
    need = math.prod(shape) * dtype.itemsize
    if file.tell() + need != entry.file_size or entry.file_size > _MAX_DEFLATE_RATIO * max(entry.compress_size, 1):
        raise ValueError(
            f"entry {entry.filename!r} claims shape {shape} of {dtype} ({need:,} bytes) but holds "
            f"{entry.file_size:,} bytes, {entry.compress_size:,} compressed"
        )
    return shape, dtype, "F" if fortran else "C"


_LLAMA_SCOPE_FOLDER = re.compile(r"Llama3_1-8B-Base-L(?P<layer>\d+)(?P<site>[RMA])-(?P<x>\d+)x")


def describe_llama_scope(folder: Path) -> Found:
    hyper = read_json(folder / "hyperparams.json")
    hook = hyper.get("hook_point_in")
    return Found("llama_scope", hook and names.transformer_lens_to_module(hook, "llama"), hyper.get("d_sae"))


def read_llama_scope(folder: Path) -> tuple[SaeConfig, dict[str, Tensor]]:
    """An SAE, or a transcoder when `hook_point_in` and `hook_point_out` differ."""
    hyper = read_json(folder / "hyperparams.json")
    d_in, n = hyper["d_model"], hyper["d_sae"]
    src = folder / "checkpoints" / "final.safetensors"
    raw = load_safetensors(src)
    t = {
        "W_enc": take(raw, "encoder.weight", (n, d_in), src),
        "W_dec": take(raw, "decoder.weight", (d_in, n), src).T,
        "b_enc": take(raw, "encoder.bias", (n,), src),
        "b_dec": take(raw, "decoder.bias", (d_in,), src),
    }
    # Inputs (and targets) were scaled to mean norm sqrt(d_model) by dataset-wide constants. Folded as SAELens folds
    # them, with the one scalar threshold scaled alike (sae_lens `get_llama_scope_config_from_hf`); this fires the
    # same latents and predicts the same output as OpenMOSS' own loader at the release (lm_saes
    # `standardize_parameters_of_dataset_activation_scaling`, commit 1e71036), whose latents are these / scale_in.
    norms = hyper["dataset_average_activation_norm"]
    scale_in, scale_out = (math.sqrt(d_in) / norms[side] for side in ("in", "out"))
    t["threshold"] = torch.full((n,), max(float(hyper["jump_relu_threshold"]) * scale_in, 0.0))
    fold_input_scale(t, scale_in, scale_out)
    model = "meta-llama/Llama-3.1-8B"
    hook_in, hook_out = hyper["hook_point_in"], hyper["hook_point_out"]
    output = {} if hook_out == hook_in else {"output_hookpoint": names.transformer_lens_to_module(hook_out, model)}
    config = config_of(
        d_in,
        n,
        "jumprelu",
        apply_b_dec_to_input=False,
        hookpoint=names.transformer_lens_to_module(hook_in, model),
        base_model_name_or_path=model,
        **output,
    )
    return config, t
