"""SAELens' folders (`sae_lens/saes/*.py`): cfg.json + sae_weights.safetensors, `W_enc` (d_in, d_sae); pre-6.0
configs are flat. Its transcoders (`saes/transcoder.py`) decode to `d_out`, name their target
`metadata.hook_name_out`, and the skip ones add `x @ W_skip.T`, `W_skip` (d_out, d_in). Checkpoints keep TopK's decoder
norms unfolded (`rescale_acts_by_decoder_norm`) and the activation scale in activation_scaler.json."""

from pathlib import Path
from typing import Any

from torch import Tensor

from ..configuration_sae import SaeConfig
from ..layout import read_json
from . import names
from .tensors import (
    Found,
    config_of,
    fold_decoder_norms,
    fold_input_scale,
    load_safetensors,
    nonnegative,
    refuse,
    take,
)


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
        raise refuse(folder, "activation_fn", activation, "only relu and topk are known for pre-6.0 configs.")
    if isinstance(cfg.get("normalize_activations"), bool) or cfg.get("normalize_activations") is None:
        cfg["normalize_activations"] = "expected_average_only_in" if cfg.get("normalize_activations") else "none"
    return cfg


def _hook(meta: dict[str, Any], suffix: str = "") -> str | None:
    """Where the SAE reads (`suffix` "_out": where a transcoder writes): hf_sae's own exports keep the hookpoint beside
    the module whose output SAELens hooks, when the two differ (a block's input)."""
    return meta.get(f"hf_sae_hookpoint{suffix}") or meta.get(f"hook_name{suffix}")


def describe_saelens(folder: Path) -> Found:
    cfg = _saelens_cfg(folder)
    meta = cfg.get("metadata") or {}
    hook = _hook(meta)
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
        raise refuse(folder, "architecture", arch, f"hf_sae reads the SAELens architectures {known}.")
    if meta.get("hook_head_index") is not None:
        raise refuse(folder, "hook_head_index", meta["hook_head_index"], "an SAE on one attention head's output.")
    if cfg.get("reshape_activations", "none") not in ("none", "hook_z"):
        raise refuse(folder, "reshape_activations", cfg["reshape_activations"], "unknown reshaping.")
    scaler = folder / "activation_scaler.json"
    scale = read_json(scaler).get("scaling_factor") if scaler.is_file() else None
    normalize = cfg.get("normalize_activations", "none")
    if normalize not in ("none", "expected_average_only_in") or (normalize != "none" and scale is None):
        why = {
            "expected_average_only_in": "its scale factor is neither folded in nor in activation_scaler.json.",
            "layer_norm": "a per-token layer norm of the input, undone on the output.",
            "constant_norm_rescale": "a per-token rescaling of the input to norm sqrt(d_in).",
        }.get(normalize, "a transform of the input that is not folded into the weights.")
        raise refuse(folder, "normalize_activations", normalize, why)
    raw = load_safetensors(folder / "sae_weights.safetensors")
    src = folder / "sae_weights.safetensors"
    t = {
        "W_enc": take(raw, "W_enc", (d_in, n), src).T,
        "W_dec": take(raw, "W_dec", (n, d_in), src),
        "b_dec": take(raw, "b_dec", (d_in,), src),
    }
    t["b_enc"] = take(raw, "b_gate" if arch == "gated" else "b_enc", (n,), src)
    if arch == "gated":
        t["r_mag"], t["b_mag"] = take(raw, "r_mag", (n,), src), take(raw, "b_mag", (n,), src)
    if "scaling_factor" in raw:  # legacy finetuning factor: latents are multiplied by it before decoding
        t["W_dec"] = t["W_dec"] * take(raw, "scaling_factor", (n,), src)[:, None]
    fields: dict[str, Any] = {}
    if arch == "jumprelu":
        if "log_threshold" in raw and "threshold" not in raw:  # checkpoints before SAELens 6.48
            t["threshold"] = take(raw, "log_threshold", (n,), src).exp()
        else:
            t["threshold"] = take(raw, "threshold", (n,), src)
        t["threshold"] = nonnegative(t["threshold"])
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
            fold_decoder_norms(t)
    if scale is not None:
        fold_input_scale(t, float(scale))
    model = names.hub_model_id(meta.get("model_name"))
    hook = _hook(meta)
    config = config_of(
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
        raise refuse(folder, "metadata.hook_name_out", meta.get("hook_name_out"), why)
    if cfg.get("normalize_activations", "none") != "none":
        raise refuse(folder, "normalize_activations", cfg["normalize_activations"], "a transcoder's input transform "
                      "that is not folded into its weights.")  # fmt: skip
    src = folder / "sae_weights.safetensors"
    raw = load_safetensors(src)
    t = {
        "W_enc": take(raw, "W_enc", (d_in, n), src).T,
        "W_dec": take(raw, "W_dec", (n, d_out), src),
        "b_enc": take(raw, "b_enc", (n,), src),
        "b_dec": take(raw, "b_dec", (d_out,), src),
    }
    if skip:
        t["W_skip"] = take(raw, "W_skip", (d_out, d_in), src)
    if arch == "jumprelu":
        t["threshold"] = nonnegative(take(raw, "threshold", (n,), src))
    model = names.hub_model_id(meta.get("model_name"))
    config = config_of(
        d_in,
        n,
        arch,
        d_out=d_out,
        apply_b_dec_to_input=False,
        hookpoint=names.transformer_lens_to_module(_hook(meta), model),
        output_hookpoint=names.transformer_lens_to_module(_hook(meta, "_out"), model),
        skip_connection=skip,
        base_model_name_or_path=model,
    )
    return config, t
