"""SAELens' release registry as entries of hf_sae's own: every release id of `sae_lens/pretrained_saes.yaml` resolves
to its Hub repo, base model, SAELens loader and the hf_sae format that reads it (or the reason it is refused), and
each of its SAEs to its folder or file in the repo, its hookpoint (a module path), its L0 and width where the registry
says them, and the activation scale SAELens folds in (`norm_scaling_factor`) where the registry holds one. The facts
are in saelens_releases.json.gz (written from SAELens' registry by tests/fixtures/saelens_registry.py; `_about` holds
its SAELens version and date)."""

import functools
import gzip
import json
import re
from importlib import resources
from typing import Any

from ..errors import HookpointError
from . import names
from .readers import parse_width

# SAELens' loader (`conversion_func` in pretrained_saes.yaml; None is its own format) -> the hf_sae format that reads
# the release's SAEs. Every loader of SAELens 6.54.12 is here or in REFUSED.
LOADERS = {
    None: "saelens",
    "gemma_2": "gemma_scope",
    "gemma_2_transcoder": "gemma_scope",
    "gemma_3": "gemma_scope_2",
    "llama_scope": "llama_scope",
    "llama_scope_r1_distill": "llama_scope_r1",
    "dictionary_learning_1": "dictionary_learning",
    "sparsify": "sparsify",
    "qwen_scope": "qwen_scope",
    "goodfire": "goodfire",
    "deepseek_r1": "deepseek_r1",
    "connor_rob_hook_z": "hook_z",
    "mwhanna_transcoder": "circuit_tracer_layer",
}
# The loaders whose SAEs hf_sae refuses, and why.
REFUSED = {
    "mntss_clt_layer_transcoder": (
        "each SAE is one layer of a cross-layer transcoder with its decoders into every later layer summed, which "
        "SAELens says gives feature activations but no reconstruction. Load the whole cross-layer transcoder instead: "
        "`hf_sae.load_transcoders({repo_id!r})`."
    ),
    "temporal": (
        "a Temporal SAE (Bhalla et al. 2025) predicts each token's code by attention over the earlier tokens, an "
        "architecture hf_sae does not have."
    ),
}
_TL_HOOK = re.compile(
    r"blocks\.\d+\.(hook_resid_pre|hook_resid_mid|hook_resid_post|hook_mlp_out|hook_attn_out|attn\.hook_z|"
    r"ln2\.hook_normalized)"
)
# Where SAELens' loaders (`loading/pretrained_sae_loaders.py`) take the hook from the repo or folder name: Gemma Scope
# 1 by the repo's last word, Gemma Scope 2 by the folder's site word, Qwen Scope always the residual stream, mwhanna's
# transcoders the MLP input; the layer is the folder's number. A transcoder's hook is the MLP's normalised input.
_MLP_IN = "ln2.hook_normalized"
_GEMMA_SITES = {"res": "hook_resid_post", "mlp": "hook_mlp_out", "att": "attn.hook_z", "transcoders": _MLP_IN}
_LAYER = re.compile(r"layer_?(\d+)")
_LLAMA_SCOPE = re.compile(r"L(\d+)([RMA])\b")  # Llama3_1-8B-Base-L3R-8x: layer 3, residual
_LLAMA_SCOPE_SITES = {"R": "hook_resid_post", "M": "hook_mlp_out", "A": "hook_attn_out"}
_WIDTH = re.compile(r"width_(\d+[km]?)(?![0-9a-z])")
_QWEN_SCOPE_WIDTH = re.compile(r"-W(\d+)K-L0_")  # Qwen/SAE-Res-Qwen3-1.7B-Base-W32K-L0_50: 32 x 1024 latents


def _site(func: str | None, repo_id: str, path: str) -> str | None:
    if func in ("gemma_2", "gemma_2_transcoder"):
        return _GEMMA_SITES.get(repo_id.rsplit("-", 1)[-1])
    return {"qwen_scope": "hook_resid_post", "goodfire": "hook_resid_post", "mwhanna_transcoder": _MLP_IN}.get(
        func or ""
    )


def saelens_hook(entry: dict[str, Any], sae_id: str, path: str) -> str | None:
    """The TransformerLens hook one SAE of a release reads, where the registry says it: in the SAE's id
    (`blocks.8.hook_resid_pre_768`), in the release's config overrides, in the folder and repo name as SAELens'
    loaders read them. None where only the repo's own config would say."""
    if match := _TL_HOOK.match(sae_id):
        return match[0]
    if entry["hook_name"]:
        return entry["hook_name"]
    if entry["conversion_func"] == "gemma_3":
        return names.gemma_scope_2_hook(path)
    if entry["conversion_func"] in ("llama_scope", "llama_scope_r1_distill") and (match := _LLAMA_SCOPE.search(path)):
        return f"blocks.{match[1]}.{_LLAMA_SCOPE_SITES[match[2]]}"
    if entry["conversion_func"] == "connor_rob_hook_z" and (match := re.fullmatch(r"blocks\.(\d+)\.hook_z", sae_id)):
        return f"blocks.{match[1]}.attn.hook_z"  # the heads concatenated (SAELens reshapes hook_z so)
    site, layer = _site(entry["conversion_func"], entry["repo_id"], path), _LAYER.search(path) or _LAYER.search(sae_id)
    return f"blocks.{layer[1]}.{site}" if site and layer else None


def _hookpoint(hook: str | None, model: str | None) -> str | None:
    try:
        return hook and names.transformer_lens_to_module(hook, model)
    except HookpointError:  # a site with no module in this family: the SAE is listed by its folder
        return None


def _entry(release: dict[str, Any]) -> dict[str, Any]:
    model = names.hub_model_id(release["model"])
    paths = {}
    repo_width = _QWEN_SCOPE_WIDTH.search(release["repo_id"]) if release["conversion_func"] == "qwen_scope" else None
    for sae_id, path, l0, *scale in release["saes"]:
        width = _WIDTH.search(path)
        paths[path] = {
            "id": sae_id,
            "hookpoint": _hookpoint(saelens_hook(release, sae_id, path), model),
            "l0": None if l0 is None else float(l0),
            "width": parse_width(width[1]) if width else repo_width and int(repo_width[1]) * 1024,
        } | ({"scale": float(scale[0])} if scale else {})
    loader, repo_id = release["conversion_func"], release["repo_id"]
    entry = {"repo_id": repo_id, "format": LOADERS.get(loader), "base_model": model, "folders": [], "paths": paths}
    entry["loader"] = loader or "sae_lens"
    if loader in REFUSED:
        entry["refused"] = REFUSED[loader].format(repo_id=repo_id)
    return entry


@functools.cache
def saelens_releases() -> dict[str, dict[str, Any]]:
    """Every release of SAELens' registry by its id, as `formats.releases()` entries (with `loader`, and `refused`
    where hf_sae cannot read it) whose `paths` map each SAE's folder or file to its `id`, `hookpoint`, `l0`, `width`
    and, where the registry has one, `scale`."""
    data = resources.files(__package__).joinpath("saelens_releases.json.gz").read_bytes()
    registry = json.loads(gzip.decompress(data))
    return {name: _entry(release) for name, release in registry.items() if not name.startswith("_")}


def saelens_provenance() -> dict[str, Any]:
    """Which SAELens version's registry this is, and when it was read."""
    data = resources.files(__package__).joinpath("saelens_releases.json.gz").read_bytes()
    return json.loads(gzip.decompress(data))["_about"]
