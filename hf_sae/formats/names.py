"""Other projects' names for where an SAE reads, translated to module paths as `named_modules()` spells them.

TransformerLens names (`blocks.L.hook_resid_post`, used by SAELens and Llama Scope) depend on the model family;
sparsify names modules relative to the base model (`layers.L`); Gemma Scope says `layer_L` and leaves the site to
the release name (res, mlp, att).
"""

import re

from ..errors import HookpointError
from ..hookpoints import INPUT_SUFFIX
from ..layout import hookpoint_folder

# Module paths per family: the decoder blocks, and within block L the MLP output, attention output, the attention's
# concatenated heads (TransformerLens `hook_z`, the input of the output projection) and the mid-block residual.
_FAMILIES = {
    "llama": {
        "prefix": "model",
        "blocks": "model.layers",
        "embed": "model.embed_tokens",
        "mlp_out": "mlp",
        "attn_out": "self_attn",
        "z": "self_attn.o_proj" + INPUT_SUFFIX,
        "mlp_in": "post_attention_layernorm",  # its output is what the MLP reads
        "resid_mid": "post_attention_layernorm" + INPUT_SUFFIX,
    },
    # Gemma 2 and 3 normalise each sublayer's output before the residual add; TransformerLens hooks after that norm.
    "gemma": {
        "prefix": "model",
        "blocks": "model.layers",
        "embed": "model.embed_tokens",
        "mlp_out": "post_feedforward_layernorm",
        "attn_out": "post_attention_layernorm",
        "z": "self_attn.o_proj" + INPUT_SUFFIX,
        "mlp_in": "pre_feedforward_layernorm",  # its output is what the MLP reads
        "resid_mid": "pre_feedforward_layernorm" + INPUT_SUFFIX,
    },
    "gpt2": {
        "prefix": "transformer",
        "blocks": "transformer.h",
        "embed": "transformer.wte",
        "mlp_out": "mlp",
        "attn_out": "attn",
        "z": "attn.c_proj" + INPUT_SUFFIX,
        "mlp_in": "ln_2",  # its output is what the MLP reads
        "resid_mid": "ln_2" + INPUT_SUFFIX,
    },
    "neox": {
        "prefix": "gpt_neox",
        "blocks": "gpt_neox.layers",
        "embed": "gpt_neox.embed_in",
        "mlp_out": "mlp",
        "attn_out": "attention",
        "z": "attention.dense" + INPUT_SUFFIX,
        "mlp_in": "post_attention_layernorm",  # its output is what the MLP reads
        "resid_mid": None,  # parallel attention and MLP: no residual between them
    },
}

# TransformerLens model names as SAELens configs spell them -> Hub ids.
_MODEL_ALIASES = {"gpt2-small": "gpt2", "gpt2-medium": "gpt2-medium", "gpt2-large": "gpt2-large",
                  "mistral-7b": "mistralai/Mistral-7B-v0.1"}  # fmt: skip
_QWEN3 = re.compile(r"qwen3-(\d+(?:\.\d+)?)b")  # as TransformerLens names them (supported_models.py)
_ALIAS_PREFIXES = {"gemma-": "google/", "pythia-": "EleutherAI/"}

_TL_HOOK = re.compile(
    r"blocks\.(?P<layer>\d+)\.(?P<site>hook_resid_pre|hook_resid_mid|hook_resid_post|hook_mlp_out|hook_attn_out|"
    r"attn\.hook_z|ln2\.hook_normalized)"
)


def hub_model_id(name: str | None) -> str | None:
    """A Hub id for a model named the TransformerLens way (`gpt2-small`, `gemma-2-2b`); other names unchanged."""
    if not name or "/" in name:
        return name
    if name in _MODEL_ALIASES:
        return _MODEL_ALIASES[name]
    if match := _QWEN3.fullmatch(name):
        return f"Qwen/Qwen3-{match[1]}B"
    return next((prefix + name for start, prefix in _ALIAS_PREFIXES.items() if name.startswith(start)), name)


def family(model: str | None) -> str | None:
    """The module naming family of a model id, or None when the name does not say."""
    name = (model or "").lower()
    for key, names in (("gemma", ("gemma",)), ("gpt2", ("gpt2", "gpt-2")), ("neox", ("pythia", "neox"))):
        if any(n in name for n in names):
            return key
    return "llama" if any(n in name for n in ("llama", "qwen", "mistral", "smollm", "olmo", "phi-3")) else None


def block_path(layer: int, model: str | None) -> str:
    return f"{_FAMILIES[family(model) or 'llama']['blocks']}.{layer}"


def transformer_lens_to_module(hook: str, model: str | None) -> str:
    """`blocks.L.hook_resid_post` -> the module path in `model`'s Hugging Face implementation. A name that is
    already a module path (no `hook_` in it, as hf_sae's own SAELens export writes) is returned unchanged, once it
    is checked as a folder name (`../victim` is no module path)."""
    names = _FAMILIES[family(model) or "llama"]
    if hook in ("hook_embed", "embed.hook_embed"):
        return names["embed"]
    if match := _TL_HOOK.fullmatch(hook):
        block, site = f"{names['blocks']}.{match['layer']}", match["site"]
        if site == "hook_resid_post":
            return block
        if site == "hook_resid_pre":
            return block + INPUT_SUFFIX
        if site == "ln2.hook_normalized":  # the normalised residual the MLP reads: a transcoder's input
            return f"{block}.mlp{INPUT_SUFFIX}"
        sub = names[
            {"hook_resid_mid": "resid_mid", "hook_mlp_out": "mlp_out", "hook_attn_out": "attn_out"}.get(site, "z")
        ]
        if sub is None:
            raise HookpointError(f"Hook {hook!r} has no module in {model}'s family (parallel attention and MLP).")
        return f"{block}.{sub}"
    if not isinstance(hook, str) or "hook_" not in hook:  # a module path already; it will name a folder
        return hookpoint_folder(hook, "Hook")
    raise HookpointError(
        f"Cannot translate the TransformerLens hook {hook!r} to a module path: known are blocks.L.hook_resid_pre, "
        "hook_resid_mid, hook_resid_post, hook_mlp_out, hook_attn_out, attn.hook_z, ln2.hook_normalized and "
        "hook_embed. Load the SAE and set its hookpoint yourself: "
        "`SaeConfig(**{**sae.config.to_dict(), 'hookpoint': ...})`."
    )


def relative_to_module(name: str, model: str | None) -> str:
    """sparsify's `layers.3` (relative to the base model) -> `model.layers.3` where the model's family is known."""
    found = family(model)
    if found is None:
        return name  # `resolve_hookpoints` also resolves names relative to the base model
    prefix = _FAMILIES[found]["prefix"]
    return name if name.startswith(prefix + ".") else f"{prefix}.{name}"


def module_to_relative(hookpoint: str) -> str:
    """The inverse, for sparsify's folder names: `model.layers.3` -> `layers.3`."""
    for names in _FAMILIES.values():
        if hookpoint.startswith(names["prefix"] + "."):
            return hookpoint.removeprefix(names["prefix"] + ".")
    return hookpoint


def module_to_transformer_lens(hookpoint: str, model: str | None) -> str | None:
    """`model.layers.3` -> `blocks.3.hook_resid_post` (and the other sites above); None when there is no such name."""
    names = _FAMILIES[family(model) or "llama"]
    match = re.fullmatch(re.escape(names["blocks"]) + r"\.(\d+)(.*)", hookpoint)
    if not match:
        return "hook_embed" if hookpoint == names["embed"] else None
    layer, rest = match.groups()
    sites = {"": "hook_resid_post", INPUT_SUFFIX: "hook_resid_pre"}
    sites |= {f".{names[key]}": f"hook_{key}" for key in ("mlp_out", "attn_out", "resid_mid") if names[key]}
    sites[f".{names['z']}"] = "attn.hook_z"
    return f"blocks.{layer}.{sites[rest]}" if rest in sites else None


def output_module(hookpoint: str, model: str | None) -> str | None:
    """A module whose output is the activation at `hookpoint`, for tools that hook module outputs only (SAELens'
    `HookedProxyLM`): the hookpoint itself, the previous block for a block's input, the pre-MLP norm for an MLP's
    input; None where no module's output is that input (block 0's, whose embeddings some families scale in the
    model's forward; a norm's input)."""
    if not hookpoint.endswith(INPUT_SUFFIX):
        return hookpoint
    names = _FAMILIES[family(model) or "llama"]
    match = re.fullmatch(re.escape(names["blocks"]) + r"\.(\d+)(\.mlp)?" + re.escape(INPUT_SUFFIX), hookpoint)
    if not match or (match[2] is None and int(match[1]) == 0):
        return None
    layer = int(match[1])
    return f"{names['blocks']}.{layer}.{names['mlp_in']}" if match[2] else f"{names['blocks']}.{layer - 1}"


def gemma_scope_module(layer: int, site: str) -> str:
    """Gemma Scope's `layer_L` of a res / mlp / att / transcoders release (Lieberum et al. 2024) as a Gemma 2 module
    path; a transcoder reads the MLP's normalised input."""
    hooks = {
        "res": "hook_resid_post",
        "mlp": "hook_mlp_out",
        "att": "attn.hook_z",
        "transcoders": "ln2.hook_normalized",
    }
    return transformer_lens_to_module(f"blocks.{layer}.{hooks[site]}", "gemma")


# Gemma Scope 2 (Google DeepMind 2025) names the site by a word of its folder (`resid_post_all/layer_3_...`: the
# residual stream); a transcoder or CLT reads the MLP's normalised input. As SAELens' `get_gemma_3_config_from_hf`
# reads them.
_GEMMA_SCOPE_2_SITES = {"resid_post": "hook_resid_post", "attn_out": "attn.hook_z", "mlp_out": "hook_mlp_out",
                        "transcoder": "ln2.hook_normalized", "clt": "ln2.hook_normalized"}  # fmt: skip


def gemma_scope_2_hook(path: str) -> str | None:
    """The TransformerLens hook of a Gemma Scope 2 folder (`blocks.3.hook_resid_post`), or None where its path names
    no site or layer."""
    site = next((hook for word, hook in _GEMMA_SCOPE_2_SITES.items() if word in path), None)
    layer = re.search(r"layer_(\d+)", path)
    return f"blocks.{layer[1]}.{site}" if site and layer else None
