"""Readers of other projects' SAE folders: each maps the tensors to hf_sae's layout (`W_enc`, `W_dec` both
(num_latents, d_in)), folds every scale so that the SAE takes raw activations, and refuses what it cannot represent.

The formats, as their own save and load code writes and reads them:

- SAELens 6.x (`sae_lens/saes/*.py`): cfg.json + sae_weights.safetensors, `W_enc` (d_in, d_sae); pre-6.0 configs are
  flat. Its transcoders (`saes/transcoder.py`) decode to `d_out`, name their target `metadata.hook_name_out`, and the
  skip ones add `x @ W_skip.T`, `W_skip` (d_out, d_in). Checkpoints keep TopK's decoder norms unfolded
  (`rescale_acts_by_decoder_norm`) and the activation scale in activation_scaler.json.
- sparsify (`sparsify/sparse_coder.py`): cfg.json + sae.safetensors, `encoder.weight` (d_sae, d_in), `W_dec`
  (d_sae, d_in); the encoder reads x - b_dec unless the coder is a transcoder (`transcode`: it reads the module's
  input and predicts its output, adding `x @ W_skip.T` (d_in, d_in) with `skip_connection`).
- dictionary_learning (`dictionary_learning/dictionary.py`, `trainers/*.py`): ae.pt (a plain state dict) +
  config.json; biases and thresholds are already rescaled to raw activations by the training loop.
- Gemma Scope (Lieberum et al. 2024): params.npz, JumpReLU that does not subtract b_dec.
- Llama Scope (He et al. 2024): hyperparams.json + checkpoints/final.safetensors, inputs scaled to norm sqrt(d_model)
  by a dataset-wide constant; mapped as SAELens' `llama_scope` loader maps it.
"""

import math
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from ..configuration_sae import SaeConfig
from ..errors import SaeConfigError, SaeNotFoundError, WeightsError
from ..hookpoints import INPUT_SUFFIX
from ..layout import read_json
from . import names


class Found(NamedTuple):
    """What a folder holds, read from its small files only: for choosing among many SAEs before downloading."""

    format: str
    hookpoint: str | None
    num_latents: int | None
    l0: float | None = None


# ---- detection ------------------------------------------------------------------------------------------------------

# format -> the files that mark its folder (all of them present)
MARKERS = {
    "saelens": ("cfg.json", "sae_weights.safetensors"),
    "sparsify": ("cfg.json", "sae.safetensors"),
    "dictionary_learning": ("ae.pt",),
    "gemma_scope": ("params.npz",),
    "llama_scope": ("hyperparams.json", "checkpoints/final.safetensors"),
}


def format_of(files: set[str]) -> str | None:
    """The format whose marker files are all among `files` (paths relative to the SAE folder)."""
    return next((fmt for fmt, marks in MARKERS.items() if all(m in files for m in marks)), None)


def files_in(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and len(p.parts) < 64}


# ---- helpers --------------------------------------------------------------------------------------------------------


def _take(tensors: dict[str, Tensor], name: str, shape: tuple[int, ...], source: Path, *aliases: str) -> Tensor:
    """`tensors[name]` (or the first alias present) as float32, checked against `shape`."""
    key = next((k for k in (name, *aliases) if k in tensors), None)
    if key is None:
        raise WeightsError(
            f"{source} lacks tensor {name!r} (shape {shape}); it has {sorted(tensors)}. The file is incomplete or "
            "was saved for another architecture."
        )
    tensor = tensors[key]
    if tuple(tensor.shape) != shape:
        raise WeightsError(
            f"Tensor {key!r} in {source} has shape {tuple(tensor.shape)}, but its config says {shape}. The weights "
            "and config do not belong together."
        )
    return tensor.detach().to(torch.float32)


def _refuse(source: Path, field: str, value: Any, why: str) -> SaeConfigError:
    return SaeConfigError(f"{source} sets {field}={value!r}, which hf_sae cannot represent: {why}")


def _load_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(path)
    except (SafetensorError, OSError) as error:
        raise WeightsError(
            f"{path} is not a readable safetensors file ({error}). Download or save it again."
        ) from None


def _nonnegative(threshold: Tensor) -> Tensor:
    """SAELens, Gemma Scope and dictionary_learning compute relu(pre) * (pre > θ); hf_sae's JumpReLU is
    pre * (pre > θ). The two agree for every pre once θ is raised to at least 0."""
    return threshold.clamp_min(0)


def _fold_decoder_norms(t: dict[str, Tensor]) -> None:
    """Latents scaled by decoder row norms (SAELens' `rescale_acts_by_decoder_norm`) folded into the weights."""
    norms = t["W_dec"].norm(dim=-1).clamp_min(1e-8)
    t["W_enc"] = t["W_enc"] * norms[:, None]
    t["b_enc"] = t["b_enc"] * norms
    t["W_dec"] = t["W_dec"] / norms[:, None]


def _fold_input_scale(t: dict[str, Tensor], scale: float, output_scale: float | None = None) -> None:
    """An SAE that reads `scale * x` (and predicts `output_scale * y`, by default `scale * y`) made to read x and
    predict y (as `SaeModel.fold_activation_scale_`)."""
    output_scale = scale if output_scale is None else output_scale
    t["W_enc"], t["W_dec"], t["b_dec"] = t["W_enc"] * scale, t["W_dec"] / output_scale, t["b_dec"] / output_scale


def _config(d_in: int, num_latents: int, architecture: str, **fields) -> SaeConfig:
    return SaeConfig(d_in=d_in, num_latents=num_latents, architecture=architecture, **fields)


# ---- SAELens --------------------------------------------------------------------------------------------------------


def _saelens_cfg(folder: Path) -> dict[str, Any]:
    """cfg.json in the 6.x shape: a pre-6.0 (flat) config is renamed as SAELens' `handle_pre_6_0_config` does."""
    cfg = read_json(folder / "cfg.json")
    version = cfg.get("sae_lens_version") or (cfg.get("metadata") or {}).get("sae_lens_version")
    if version and int(str(version).split(".")[0]) >= 6:
        return cfg
    cfg = dict(cfg)
    cfg["metadata"] = {
        "hook_name": cfg.get("hook_name", cfg.get("hook_point")),
        "hook_head_index": cfg.get("hook_head_index", cfg.get("hook_point_head_index")),
        "model_name": cfg.get("model_name"),
    }
    activation = cfg.get("activation_fn", cfg.get("activation_fn_str", "relu"))
    cfg.setdefault("architecture", "standard")
    if activation == "topk":
        cfg["architecture"], cfg["k"] = "topk", (cfg.get("activation_fn_kwargs") or {}).get("k")
    elif activation != "relu":
        raise _refuse(folder, "activation_fn", activation, "only relu and topk are known for pre-6.0 configs.")
    if isinstance(cfg.get("normalize_activations"), bool) or cfg.get("normalize_activations") is None:
        cfg["normalize_activations"] = "expected_average_only_in" if cfg.get("normalize_activations") else "none"
    return cfg


def describe_saelens(folder: Path) -> Found:
    cfg = _saelens_cfg(folder)
    meta = cfg.get("metadata") or {}
    hook = meta.get("hook_name")
    return Found("saelens", hook and names.transformer_lens_to_module(hook, meta.get("model_name")), cfg.get("d_sae"))


def read_saelens(folder: Path) -> tuple[SaeConfig, dict[str, Tensor]]:
    cfg = _saelens_cfg(folder)
    meta = cfg.get("metadata") or {}
    d_in, n, arch = cfg.get("d_in"), cfg.get("d_sae"), cfg.get("architecture")
    kinds = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu", "gated": "gated"}
    if arch in _SAELENS_TRANSCODERS:
        return _read_saelens_transcoder(folder, cfg)
    if arch not in kinds:
        known = [*kinds, *_SAELENS_TRANSCODERS]
        raise _refuse(folder, "architecture", arch, f"hf_sae reads the SAELens architectures {known}.")
    if meta.get("hook_head_index") is not None:
        raise _refuse(folder, "hook_head_index", meta["hook_head_index"], "an SAE on one attention head's output.")
    if cfg.get("reshape_activations", "none") not in ("none", "hook_z"):
        raise _refuse(folder, "reshape_activations", cfg["reshape_activations"], "unknown reshaping.")
    scaler = folder / "activation_scaler.json"
    scale = read_json(scaler).get("scaling_factor") if scaler.is_file() else None
    normalize = cfg.get("normalize_activations", "none")
    if normalize not in ("none", "expected_average_only_in") or (normalize != "none" and scale is None):
        why = {
            "expected_average_only_in": "its scale factor is neither folded in nor in activation_scaler.json.",
            "layer_norm": "a per-token layer norm of the input, undone on the output.",
            "constant_norm_rescale": "a per-token rescaling of the input to norm sqrt(d_in).",
        }.get(normalize, "a transform of the input that is not folded into the weights.")
        raise _refuse(folder, "normalize_activations", normalize, why)
    raw = _load_safetensors(folder / "sae_weights.safetensors")
    src = folder / "sae_weights.safetensors"
    t = {
        "W_enc": _take(raw, "W_enc", (d_in, n), src).T,
        "W_dec": _take(raw, "W_dec", (n, d_in), src),
        "b_dec": _take(raw, "b_dec", (d_in,), src),
    }
    t["b_enc"] = _take(raw, "b_gate" if arch == "gated" else "b_enc", (n,), src)
    if arch == "gated":
        t["r_mag"], t["b_mag"] = _take(raw, "r_mag", (n,), src), _take(raw, "b_mag", (n,), src)
    if "scaling_factor" in raw:  # legacy finetuning factor: latents are multiplied by it before decoding
        t["W_dec"] = t["W_dec"] * _take(raw, "scaling_factor", (n,), src)[:, None]
    fields: dict[str, Any] = {}
    if arch == "jumprelu":
        if "log_threshold" in raw and "threshold" not in raw:  # checkpoints before SAELens 6.48
            t["threshold"] = _take(raw, "log_threshold", (n,), src).exp()
        else:
            t["threshold"] = _take(raw, "threshold", (n,), src)
        t["threshold"] = _nonnegative(t["threshold"])
        details = meta.get("training_architecture_details") or {}
        # BatchTopK and Matryoshka BatchTopK save as JumpReLU with their one global threshold repeated (SAELens
        # `BatchTopKTrainingSAE`, `MatryoshkaBatchTopKTrainingSAE`, whose `matryoshka_widths` are the prefix ends).
        trained_as = meta.get("training_architecture")
        if (
            trained_as in ("batchtopk", "matryoshka_batchtopk")
            and details.get("k")
            and (t["threshold"] == t["threshold"][0]).all()
        ):
            arch, fields["k"] = trained_as, int(details["k"])
            t["threshold"] = t["threshold"][0].clone()
            if arch == "matryoshka_batchtopk":
                ends = [int(w) for w in details.get("matryoshka_widths") or []]
                ends += [] if ends and ends[-1] == n else [n]  # SAELens appends d_sae when it is left out
                fields["matryoshka_group_sizes"] = [b - a for a, b in zip([0, *ends], ends)]
    if arch == "topk":
        fields["k"] = int(cfg["k"])
        if cfg.get("rescale_acts_by_decoder_norm"):
            _fold_decoder_norms(t)
    if scale is not None:
        _fold_input_scale(t, float(scale))
    model = names.hub_model_id(meta.get("model_name"))
    hook = meta.get("hook_name")
    config = _config(
        d_in,
        n,
        kinds.get(arch, arch),
        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
        hookpoint=hook and names.transformer_lens_to_module(hook, model),
        base_model_name_or_path=model,
        **fields,
    )
    return config, t


# SAELens' transcoder architectures (`saes/transcoder.py`) -> (hf_sae architecture, skip connection)
_SAELENS_TRANSCODERS = {
    "transcoder": ("relu", False),
    "skip_transcoder": ("relu", True),
    "jumprelu_transcoder": ("jumprelu", False),
    "jumprelu_skip_transcoder": ("jumprelu", True),
}


def _read_saelens_transcoder(folder: Path, cfg: dict[str, Any]) -> tuple[SaeConfig, dict[str, Tensor]]:
    """A SAELens transcoder: the encoder reads x as it is (`process_sae_in` skips b_dec), the decoder maps to d_out,
    and the target is `metadata.hook_name_out`."""
    meta = {"hook_name_out": cfg.get("hook_name_out"), **(cfg.get("metadata") or {})}  # older configs: at the top
    arch, skip = _SAELENS_TRANSCODERS[cfg["architecture"]]
    d_in, d_out, n = cfg.get("d_in"), cfg.get("d_out"), cfg.get("d_sae")
    if not meta.get("hook_name_out"):
        why = "a transcoder needs the activation it predicts; add it to cfg.json's metadata (blocks.3.hook_mlp_out)."
        raise _refuse(folder, "metadata.hook_name_out", meta.get("hook_name_out"), why)
    if cfg.get("normalize_activations", "none") != "none":
        raise _refuse(folder, "normalize_activations", cfg["normalize_activations"], "a transcoder's input transform "
                      "that is not folded into its weights.")  # fmt: skip
    src = folder / "sae_weights.safetensors"
    raw = _load_safetensors(src)
    t = {
        "W_enc": _take(raw, "W_enc", (d_in, n), src).T,
        "W_dec": _take(raw, "W_dec", (n, d_out), src),
        "b_enc": _take(raw, "b_enc", (n,), src),
        "b_dec": _take(raw, "b_dec", (d_out,), src),
    }
    if skip:
        t["W_skip"] = _take(raw, "W_skip", (d_out, d_in), src)
    if arch == "jumprelu":
        t["threshold"] = _nonnegative(_take(raw, "threshold", (n,), src))
    model = names.hub_model_id(meta.get("model_name"))
    config = _config(
        d_in,
        n,
        arch,
        d_out=d_out,
        apply_b_dec_to_input=False,
        hookpoint=names.transformer_lens_to_module(meta["hook_name"], model),
        output_hookpoint=names.transformer_lens_to_module(meta["hook_name_out"], model),
        skip_connection=skip,
        base_model_name_or_path=model,
    )
    return config, t


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
        raise _refuse(folder, "skip_connection", True, "a skip term (W_skip) applies to transcoders only, and "
                      "this coder reconstructs its input (transcode is false).")  # fmt: skip
    if cfg.get("activation", "topk") != "topk":
        raise _refuse(folder, "activation", cfg["activation"], "hf_sae has top-k but not group-max selection.")
    d_in = cfg["d_in"]
    n = cfg.get("num_latents") or d_in * cfg["expansion_factor"]
    src = folder / "sae.safetensors"
    raw = _load_safetensors(src)
    t = {
        "W_enc": _take(raw, "encoder.weight", (n, d_in), src),
        "b_enc": _take(raw, "encoder.bias", (n,), src),
        "W_dec": _take(raw, "W_dec", (n, d_in), src),
        "b_dec": _take(raw, "b_dec", (d_in,), src),
    }
    hookpoint, model = _sparsify_hookpoint(folder)
    fields: dict[str, Any] = {"hookpoint": hookpoint}
    if transcode:  # the module's input predicts its output; the encoder reads x as it is (SparseCoder.encode)
        fields = {"hookpoint": hookpoint + INPUT_SUFFIX, "output_hookpoint": hookpoint, "apply_b_dec_to_input": False}
    if skip:
        t["W_skip"] = _take(raw, "W_skip", (d_in, d_in), src)
        fields["skip_connection"] = True
    # Otherwise the encoder subtracts b_dec although cfg.json does not say so (SparseCoder.encode).
    return _config(d_in, n, "topk", k=cfg["k"], base_model_name_or_path=model, **fields), t


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


def _load_state_dict(path: Path) -> dict[str, Tensor]:
    """ae.pt through `torch.load(weights_only=True)`: tensors and plain containers only, never code."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise WeightsError(
            f"{path} is not a plain state dict that can be read without running code ({reason}). hf_sae reads "
            "ae.pt only with torch.load(weights_only=True); save `{name: tensor}` with torch.save instead."
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise WeightsError(f"{path} should hold a state dict of tensors; got {type(state).__name__}.")
    return state


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
        raise _refuse(folder / "config.json", "buffer.io", io, "dictionary_learning's dictionaries reconstruct "
                      "their input; none reads one activation and predicts another.")  # fmt: skip
    dict_class, d_in, n = trainer.get("dict_class"), trainer.get("activation_dim"), trainer.get("dict_size")
    src = folder / "ae.pt"
    raw = _load_state_dict(src)
    fields: dict[str, Any] = {"apply_b_dec_to_input": True}
    if dict_class == "AutoEncoder" and "bias" not in raw and "decoder.bias" in raw:
        dict_class = "AutoEncoderNew"  # its trainer (StandardTrainerAprilUpdate) writes dict_class "AutoEncoder"

    def linear() -> dict[str, Tensor]:  # nn.Linear weights are (out, in)
        return {
            "W_enc": _take(raw, "encoder.weight", (n, d_in), src),
            "W_dec": _take(raw, "decoder.weight", (d_in, n), src).T,
        }

    def parameters() -> dict[str, Tensor]:  # the W_enc (d_in, d_sae) classes
        return {"W_enc": _take(raw, "W_enc", (d_in, n), src).T, "W_dec": _take(raw, "W_dec", (n, d_in), src)}

    if dict_class == "AutoEncoder":
        t = linear() | {"b_enc": _take(raw, "encoder.bias", (n,), src), "b_dec": _take(raw, "bias", (d_in,), src)}
        arch = "relu"
    elif dict_class == "AutoEncoderNew":
        t = linear() | {
            "b_enc": _take(raw, "encoder.bias", (n,), src),
            "b_dec": _take(raw, "decoder.bias", (d_in,), src),
        }
        arch, fields["apply_b_dec_to_input"] = "relu", False
    elif dict_class in ("AutoEncoderTopK", "BatchTopKSAE", "MatryoshkaBatchTopKSAE"):
        t = parameters() if "W_enc" in raw else linear()
        t["b_enc"] = _take(raw, "b_enc", (n,), src, "encoder.bias")
        t["b_dec"] = _take(raw, "b_dec", (d_in,), src)
        fields["k"] = int(raw["k"]) if "k" in raw else int(trainer["k"])
        arch = {"AutoEncoderTopK": "topk", "BatchTopKSAE": "batchtopk"}.get(dict_class, "matryoshka_batchtopk")
        if arch != "topk":  # inference keeps relu(pre) above one global threshold (use_threshold=True)
            t["threshold"] = _take(raw, "threshold", (), src)
        if arch == "matryoshka_batchtopk":  # the `group_sizes` buffer; the trainer's config.json has them too
            sizes = raw["group_sizes"].tolist() if "group_sizes" in raw else trainer.get("group_sizes")
            fields["matryoshka_group_sizes"] = sizes
    elif dict_class == "JumpReluAutoEncoder":
        t = parameters() | {"b_enc": _take(raw, "b_enc", (n,), src), "b_dec": _take(raw, "b_dec", (d_in,), src)}
        t["threshold"] = _nonnegative(_take(raw, "threshold", (n,), src))
        arch, fields["apply_b_dec_to_input"] = "jumprelu", False  # an attribute not saved, False by default
    elif dict_class == "GatedAutoEncoder":
        t = linear() | {"b_enc": _take(raw, "gate_bias", (n,), src), "b_dec": _take(raw, "decoder_bias", (d_in,), src)}
        t |= {"r_mag": _take(raw, "r_mag", (n,), src), "b_mag": _take(raw, "mag_bias", (n,), src)}
        arch = "gated"
    else:
        known = "AutoEncoder(New), AutoEncoderTopK, (Matryoshka)BatchTopKSAE, JumpReluAutoEncoder, GatedAutoEncoder"
        raise _refuse(folder / "config.json", "trainer.dict_class", dict_class, f"hf_sae reads {known}.")
    hookpoint = _dictionary_learning_hookpoint(trainer, config.get("buffer", {}))
    model = trainer.get("lm_name")
    return _config(d_in, n, arch, hookpoint=hookpoint, base_model_name_or_path=model, **fields), t


# ---- Gemma Scope and Llama Scope ------------------------------------------------------------------------------------

_GEMMA_FOLDER = re.compile(r"layer_(?P<layer>\d+)/width_(?P<width>\d+[km]?)/average_l0_(?P<l0>\d+)")
_GEMMA_MODELS = re.compile(r"gemma-scope-(?P<size>\d+b)-(?P<kind>pt|it)-(?P<site>res|mlp|att)")


def parse_width(text: str) -> int:
    """Gemma Scope's `16k` = 16384, `1m` = 1048576."""
    return int(text[:-1]) * {"k": 1024, "m": 1024**2}[text[-1]] if text[-1] in "km" else int(text)


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
    try:
        with np.load(src, allow_pickle=False) as data:
            raw = {("W_" + k[2:] if k.startswith("w_") else k): torch.from_numpy(data[k].copy()) for k in data.files}
    except (ValueError, OSError) as error:
        raise WeightsError(f"{src} is not a readable npz file of arrays ({error}). Download it again.") from None
    if "W_enc" not in raw:
        raise WeightsError(f"{src} lacks tensor 'W_enc'; it has {sorted(raw)}. It is not a Gemma Scope SAE.")
    d_in, n = raw["W_enc"].shape
    t = {
        "W_enc": _take(raw, "W_enc", (d_in, n), src).T,
        "W_dec": _take(raw, "W_dec", (n, d_in), src),
        "b_enc": _take(raw, "b_enc", (n,), src),
        "b_dec": _take(raw, "b_dec", (d_in,), src),
        "threshold": _nonnegative(_take(raw, "threshold", (n,), src)),
    }
    found = describe_gemma_scope(folder, hint)
    if found.hookpoint is None and "embedding" in folder.as_posix():
        raise _refuse(folder, "folder", "embedding", "Gemma Scope's embedding SAEs read the scaled embedding, "
                      "which no module outputs.")  # fmt: skip
    _, model = gemma_scope_context(folder, hint)
    config = _config(
        d_in, n, "jumprelu", apply_b_dec_to_input=False, hookpoint=found.hookpoint, base_model_name_or_path=model
    )
    return config, t


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
    raw = _load_safetensors(src)
    t = {
        "W_enc": _take(raw, "encoder.weight", (n, d_in), src),
        "W_dec": _take(raw, "decoder.weight", (d_in, n), src).T,
        "b_enc": _take(raw, "encoder.bias", (n,), src),
        "b_dec": _take(raw, "decoder.bias", (d_in,), src),
    }
    # Inputs (and targets) were scaled to mean norm sqrt(d_model) by dataset-wide constants. Folded as SAELens folds
    # them, with the one scalar threshold scaled alike (sae_lens `get_llama_scope_config_from_hf`); this fires the
    # same latents and predicts the same output as OpenMOSS' own loader at the release (lm_saes
    # `standardize_parameters_of_dataset_activation_scaling`, commit 1e71036), whose latents are these / scale_in.
    norms = hyper["dataset_average_activation_norm"]
    scale_in, scale_out = (math.sqrt(d_in) / norms[side] for side in ("in", "out"))
    t["threshold"] = torch.full((n,), max(float(hyper["jump_relu_threshold"]) * scale_in, 0.0))
    _fold_input_scale(t, scale_in, scale_out)
    model = "meta-llama/Llama-3.1-8B"
    hook_in, hook_out = hyper["hook_point_in"], hyper["hook_point_out"]
    output = {} if hook_out == hook_in else {"output_hookpoint": names.transformer_lens_to_module(hook_out, model)}
    config = _config(
        d_in,
        n,
        "jumprelu",
        apply_b_dec_to_input=False,
        hookpoint=names.transformer_lens_to_module(hook_in, model),
        base_model_name_or_path=model,
        **output,
    )
    return config, t


READERS: dict[str, Callable[..., tuple[SaeConfig, dict[str, Tensor]]]] = {
    "saelens": read_saelens,
    "sparsify": read_sparsify,
    "dictionary_learning": read_dictionary_learning,
    "gemma_scope": read_gemma_scope,
    "llama_scope": read_llama_scope,
}
DESCRIBERS: dict[str, Callable[..., Found]] = {
    "saelens": describe_saelens,
    "sparsify": describe_sparsify,
    "dictionary_learning": describe_dictionary_learning,
    "gemma_scope": describe_gemma_scope,
    "llama_scope": describe_llama_scope,
}
