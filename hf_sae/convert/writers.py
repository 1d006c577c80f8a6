"""Export an `SaeModel` to the formats other tools read.

- SAELens 6.x: what `SAE.load_from_disk` loads, and so what SAEDashboard, SAEBench and Neuronpedia's upload read.
  `metadata.hook_name` is a module path whose output is the activation (a block's input: the block before) and
  `model_class_name` is `AutoModelForCausalLM`, so that SAELens' `HookedProxyLM` attaches the SAE to the Hugging Face
  model; `prepend_bos` and `seqpos_slice` make its `ActivationsStore` harvest as hf_sae does (BOS first, position 0
  left out). SAELens 6.54.12 ran every architecture so through SmolLM2 (tests/fixtures/saelens_export/). BatchTopK is
  written as SAELens writes its own: a JumpReLU SAE with the global threshold repeated per latent, and Matryoshka
  BatchTopK too, its nested widths in `training_architecture_details.matryoshka_widths`.
- sparsify: `SparseCoder.load_from_disk`'s cfg.json + sae.safetensors, top-k SAEs only.

Transcoders go out as SAELens' transcoder classes (relu, jumprelu and the BatchTopK family as jumprelu, with or
without skip term; `hook_name_out` names the target; SAELens has no top-k transcoder) and as sparsify transcoders
(top-k, from a module's input to its output, of the same width).
"""

import json
from itertools import accumulate
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..errors import SaeConfigError
from ..formats import names
from ..hookpoints import INPUT_SUFFIX
from ..layout import replace_folder, staging_folder, write_json
from ..modeling_sae import SaeModel
from ..version import __version__

# SAELens treats a config without a 6.x version as pre-6.0 and renames its keys; this is the layout version.
SAELENS_LAYOUT_VERSION = "6.0.0"


def _tensors(sae: SaeModel) -> dict[str, torch.Tensor]:
    t = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in sae.state_dict().items()}
    if sae.config.is_transcoder and sae.config.apply_b_dec_to_input:
        # SAELens' and sparsify's transcoders encode x as it is: b_dec's share moves into the encoder bias.
        t["b_enc"] = t["b_enc"] - t["W_enc"] @ t["b_dec"]
    return t


# hf_sae architecture -> SAELens transcoder architecture, without and with a skip term (`saes/transcoder.py`); the
# BatchTopK family's inference rule is JumpReLU's with one threshold for all latents
_JUMPRELU_TRANSCODERS = ("jumprelu_transcoder", "jumprelu_skip_transcoder")
_SAELENS_TRANSCODERS = {"relu": ("transcoder", "skip_transcoder"), "jumprelu": _JUMPRELU_TRANSCODERS,
                        "batchtopk": _JUMPRELU_TRANSCODERS, "matryoshka_batchtopk": _JUMPRELU_TRANSCODERS}  # fmt: skip


def _saelens_hooks(cfg) -> dict[str, str]:
    """SAELens' `hook_name` (and a transcoder's `hook_name_out`): module paths whose outputs are the activations,
    as its Hugging Face wrapper (`HookedProxyLM`) hooks module outputs only. Where that is another module than the
    hookpoint (a block's input is the block before's output), hf_sae's own name goes beside it."""
    hooks = {}
    for key, hookpoint in (("hook_name", cfg.hookpoint), ("hook_name_out", cfg.output_hookpoint)):
        if hookpoint is None:
            continue
        module = names.output_module(hookpoint, cfg.base_model_name_or_path)
        if module is None:
            raise SaeConfigError(
                f"SAELens' Hugging Face wrapper hooks module outputs, and no module's output is {hookpoint!r} (the "
                "input of block 0 or of a norm). Export it with `--to hf_sae`, whose hooks read module inputs too."
            )
        hooks[key] = module
        if module != hookpoint:
            hooks[key.replace("hook_name", "hookpoint")] = hookpoint
    return hooks


def to_saelens(sae: SaeModel, folder: Path) -> Path:
    cfg, t = sae.config, _tensors(sae)
    arch = cfg.architecture
    weights = {"W_enc": t["W_enc"].T.contiguous(), "W_dec": t["W_dec"], "b_dec": t["b_dec"]}
    fields, training = {}, {}
    if cfg.is_transcoder:
        if arch not in _SAELENS_TRANSCODERS:
            raise SaeConfigError(  # SAELens 6.54 has no top-k transcoder class (`saes/transcoder.py`)
                "SAELens' transcoders are relu or jumprelu (BatchTopK goes as jumprelu); this transcoder is "
                f"{arch!r}. hf_sae's own format holds it (`--to hf_sae`)"
                + (
                    ", and sparsify's where it predicts a module's output from that module's input at the same width "
                    "(`--to sparsify`); circuit-tracer's cannot express TopK either."
                    if arch == "topk"
                    else "."
                )
            )
        fields = {"d_out": cfg.d_out}
        if cfg.skip_connection:
            weights["W_skip"] = t["W_skip"]
    if arch == "gated":
        weights |= {"b_gate": t["b_enc"], "r_mag": t["r_mag"], "b_mag": t["b_mag"]}
    else:
        weights["b_enc"] = t["b_enc"]
    if arch == "jumprelu":
        if (negative := int((t["threshold"] < 0).sum())) > 0:
            raise SaeConfigError(
                f"{negative} JumpReLU thresholds of this SAE are below 0; SAELens computes relu(pre) * (pre > θ) and "
                "would zero the negative latents hf_sae keeps. Clamp them (`sae.threshold.clamp_(min=0)`) first."
            )
        weights["threshold"] = t["threshold"]
    elif arch in ("batchtopk", "matryoshka_batchtopk"):  # an unset threshold (< 0) keeps every positive latent
        weights["threshold"] = t["threshold"].clamp_min(0).expand(cfg.num_latents).contiguous()
        details = {"k": cfg.k}
        if arch == "matryoshka_batchtopk":
            details["matryoshka_widths"] = list(accumulate(cfg.matryoshka_group_sizes))
        training = {"training_architecture": arch, "training_architecture_details": details}
    elif arch == "topk":
        fields = {"k": cfg.k, "rescale_acts_by_decoder_norm": False}
    saelens_arch = {"relu": "standard", "batchtopk": "jumprelu", "matryoshka_batchtopk": "jumprelu"}.get(arch, arch)
    hooks = _saelens_hooks(cfg)
    if cfg.is_transcoder:
        saelens_arch = _SAELENS_TRANSCODERS[arch][cfg.skip_connection]
        training = {"hook_name_out": hooks["hook_name_out"]}
    config = {
        "architecture": saelens_arch,
        "d_in": cfg.d_in,
        "d_sae": cfg.num_latents,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": cfg.apply_b_dec_to_input and not cfg.is_transcoder,
        "normalize_activations": "none",
        "reshape_activations": "none",
        **fields,
        "metadata": {
            "sae_lens_version": SAELENS_LAYOUT_VERSION,
            "hf_sae_version": __version__,
            "model_name": cfg.base_model_name_or_path,
            "model_class_name": "AutoModelForCausalLM",
            "hook_name": hooks.get("hook_name"),
            "hook_head_index": None,
            # hf_sae's blocks start with BOS (`data.pack_token_ids`), added by hand as SAELens' ActivationsStore adds
            # it; position 0 is left out of training and evaluation, as `seqpos_slice` leaves it out there.
            "prepend_bos": True,
            "seqpos_slice": [1, None],
            **training,
            **{f"hf_sae_{key}": value for key, value in hooks.items() if key.startswith("hookpoint")},
        },
    }
    with staging_folder(folder) as tmp:
        save_file(weights, tmp / "sae_weights.safetensors")
        write_json(tmp / "cfg.json", config)
        replace_folder(tmp, folder)
    return folder


def to_sparsify(sae: SaeModel, folder: Path) -> Path:
    cfg, t = sae.config, _tensors(sae)
    if cfg.architecture != "topk":
        raise SaeConfigError(
            f"sparsify holds top-k SAEs only; this SAE is {cfg.architecture!r}. Export it with `--to saelens`."
        )
    if cfg.is_transcoder and (cfg.hookpoint != f"{cfg.output_hookpoint}{INPUT_SUFFIX}" or cfg.d_out != cfg.d_in):
        raise SaeConfigError(
            f"A sparsify transcoder predicts a module's output from its input, of the same width; this one reads "
            f"{cfg.hookpoint!r} (d_in={cfg.d_in}) and predicts {cfg.output_hookpoint!r} (d_out={cfg.d_out}). Export "
            "it with `--to hf_sae`."
        )
    bias = t["b_enc"]
    if not cfg.apply_b_dec_to_input and not cfg.is_transcoder:  # sparsify encodes x - b_dec: move b_dec into the bias
        bias = bias + t["W_enc"] @ t["b_dec"]
    weights = {"encoder.weight": t["W_enc"], "encoder.bias": bias, "W_dec": t["W_dec"], "b_dec": t["b_dec"]}
    if cfg.skip_connection:
        weights["W_skip"] = t["W_skip"]
    config = {
        "activation": "topk",
        "expansion_factor": max(cfg.num_latents // cfg.d_in, 1),
        "normalize_decoder": True,
        "num_latents": cfg.num_latents,
        "k": cfg.k,
        "multi_topk": False,
        "skip_connection": cfg.skip_connection,
        "transcode": cfg.is_transcoder,
        "d_in": cfg.d_in,
    }
    with staging_folder(folder) as tmp:
        save_file(weights, tmp / "sae.safetensors")
        (tmp / "cfg.json").write_text(json.dumps(config))
        replace_folder(tmp, folder)
    return folder


def sparsify_folder_name(sae: SaeModel) -> str:
    """sparsify names hookpoints relative to the base model (`layers.3`), a transcoder by its module."""
    return names.module_to_relative(sae.config.output_hookpoint or sae.config.hookpoint or "sae")


def to_hf_sae(sae: SaeModel, folder: Path) -> Path:
    with staging_folder(folder) as tmp:
        sae.save_pretrained(tmp)
        replace_folder(tmp, folder)
    return folder


WRITERS = {"saelens": to_saelens, "sparsify": to_sparsify, "hf_sae": to_hf_sae}
