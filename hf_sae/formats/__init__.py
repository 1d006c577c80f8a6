"""Other projects' SAE folders in: SAELens, sparsify, dictionary_learning, Gemma Scope 1 and 2 and Llama Scope,
detected from their files, and the single-file SAEs of some releases by release name. A reader returns
`(SaeConfig, tensors)`; the model class builds the SAE (`SaeModel.from_folder`).

    __init__   detection (which format a folder or a list of files holds), the release registry, choosing
               among the SAEs of a repo by hookpoint, width and L0
    readers    sparsify, dictionary_learning, Gemma Scope 1 and 2, Llama Scope
    release_files  the single-file layouts some releases use (Qwen Scope, Goodfire, ...), read by release name
    saelens    SAELens (SAEs, checkpoints and transcoders)
    tensors    what the readers share: `Found`, shape checks, scale folding
    registry   SAELens' release registry (every release id by name) and which reader each of its loaders maps to
    names      hookpoint names: TransformerLens and relative names to module paths and back

A release name from the shipped registry (`releases.json`, e.g. `gemma-scope-2b-pt-res`) stands for its Hub repo, its
base model and the hookpoint of each of its folders.
"""

import functools
import json
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

from torch import Tensor

from ..configuration_sae import SaeConfig
from ..errors import ArgumentError, FileFormatError, HookpointError, SaeNotFoundError
from ..layout import CONFIG, natural_key, read_json
from .readers import (
    describe_dictionary_learning,
    describe_gemma_scope,
    describe_gemma_scope_2,
    describe_llama_scope,
    describe_sparsify,
    parse_width,
    read_dictionary_learning,
    read_gemma_scope,
    read_gemma_scope_2,
    read_llama_scope,
    read_sparsify,
)
from .registry import saelens_releases
from .saelens import describe_saelens, read_saelens
from .tensors import Found

# format -> the files that mark its folder (all of them present)
MARKERS = {
    "saelens": ("cfg.json", "sae_weights.safetensors"),
    "sparsify": ("cfg.json", "sae.safetensors"),
    "dictionary_learning": ("ae.pt",),
    "gemma_scope": ("params.npz",),
    "gemma_scope_2": ("params.safetensors",),
    "llama_scope": ("hyperparams.json", "checkpoints/final.safetensors"),
}
FORMATS = ("hf_sae", *MARKERS)
_READERS = {
    "saelens": read_saelens,
    "sparsify": read_sparsify,
    "dictionary_learning": read_dictionary_learning,
    "gemma_scope": read_gemma_scope,
    "gemma_scope_2": read_gemma_scope_2,
    "llama_scope": read_llama_scope,
}
_DESCRIBERS = {
    "saelens": describe_saelens,
    "sparsify": describe_sparsify,
    "dictionary_learning": describe_dictionary_learning,
    "gemma_scope": describe_gemma_scope,
    "gemma_scope_2": describe_gemma_scope_2,
    "llama_scope": describe_llama_scope,
}
# Gemma Scope's folders do not say which site (residual, MLP, attention) they read: the release or repo name does.
_NEEDS_HINT = ("gemma_scope", "gemma_scope_2")


# ---- detection ------------------------------------------------------------------------------------------------------


def format_of(files: Iterable[str]) -> str | None:
    """The foreign format whose marker files are all among `files` (paths relative to the SAE folder)."""
    files = set(files)
    return next((fmt for fmt, marks in MARKERS.items() if all(m in files for m in marks)), None)


def files_in(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and len(p.parts) < 64}


def is_hf_sae_config(path: Path) -> bool:
    return path.is_file() and read_json(path).get("model_type") == SaeConfig.model_type


def detect_format(folder: str | Path) -> str | None:
    """The format of an SAE folder (`hf_sae`, `saelens`, `sparsify`, `dictionary_learning`, `gemma_scope`,
    `gemma_scope_2`, `llama_scope`), from the files in it; None when it holds none of them."""
    folder = Path(folder)
    if is_hf_sae_config(folder / CONFIG):
        return "hf_sae"
    return format_of(files_in(folder)) if folder.is_dir() else None


def sae_folders(files: Iterable[str]) -> dict[str, str]:
    """`{folder: format}` for every folder whose files mark a foreign format, from a list of relative paths; a
    folder inside another SAE's folder is that SAE's (`checkpoints/final.safetensors`)."""
    by_folder: dict[str, set[str]] = {}
    for path in files:
        parts = path.split("/")
        for i in range(len(parts)):
            by_folder.setdefault("/".join(parts[:i]), set()).add("/".join(parts[i:]))
    found = {folder: fmt for folder, names in by_folder.items() if (fmt := format_of(names))}
    return {f: fmt for f, fmt in found.items() if not any(f.startswith(p + "/") for p in found if p and p != f)}


def marks(fmt: str) -> str:
    return "config.json with model_type hf_sae" if fmt == "hf_sae" else " + ".join(MARKERS[fmt])


def unknown_format_error(folder: Path) -> SaeNotFoundError:
    seen = sorted(files_in(folder))[:20] if folder.is_dir() else "nothing: it is not a folder"
    return SaeNotFoundError(
        f"{folder} is in no SAE format hf_sae knows. It knows {', '.join(f'{f} ({marks(f)})' for f in FORMATS)}; "
        f"it saw {seen}. Point at the folder that holds one SAE's files."
    )


# ---- reading --------------------------------------------------------------------------------------------------------


@contextmanager
def _settings_of(folder: Path, fmt: str) -> Iterator[None]:
    """A foreign file that lacks a setting, or holds one of the wrong kind, is one clear error naming both."""
    try:
        yield
    except (KeyError, TypeError, AttributeError, IndexError) as error:
        missing = isinstance(error, KeyError)
        what = f"lack the setting {error.args[0]!r}" if missing else f"hold a setting of the wrong kind ({error})"
        files = [mark for mark in MARKERS[fmt] if mark.endswith(".json")] or list(MARKERS[fmt])
        raise FileFormatError(
            f"{folder}: its {fmt} files ({', '.join(files)}) {what}. They are incomplete or were edited: download "
            "or save the SAE again."
        ) from None


def describe(folder: Path, fmt: str, hint: str | None = None) -> Found:
    """What the SAE in `folder` reads and how wide it is, from its small files only."""
    with _settings_of(folder, fmt):
        return _DESCRIBERS[fmt](folder, hint) if fmt in _NEEDS_HINT else _DESCRIBERS[fmt](folder)


def read_format(
    folder: Path, fmt: str, *, hint: str | None = None, hookpoint: str | None = None, base_model: str | None = None
) -> tuple[SaeConfig, dict[str, Tensor]]:
    """The config and tensors of the SAE in `folder`, in hf_sae's layout with every scale folded in.

    Args:
        hint: a release or repo name that says what the folder's own files do not (Gemma Scope's site).
        hookpoint, base_model: override what the files say (a registry entry knows better).
    """
    with _settings_of(folder, fmt):
        config, tensors = _READERS[fmt](folder, hint) if fmt in _NEEDS_HINT else _READERS[fmt](folder)
    overrides = {k: v for k, v in (("hookpoint", hookpoint), ("base_model_name_or_path", base_model)) if v}
    if overrides:
        config = SaeConfig(**{**config.to_dict(), **overrides})
    return config, tensors


# ---- the registry, and choosing among many SAEs ---------------------------------------------------------------------


@functools.cache
def releases() -> dict[str, dict[str, Any]]:
    """Known releases by name: `repo_id`, `format`, `base_model`, `folders` (`pattern` -> `hookpoint`), `width`;
    every release of SAELens' registry too (`registry`), with `paths` (folder -> `hookpoint`, `l0`, `width`). hf_sae's
    own entries go first where both name a release."""
    text = resources.files(__package__).joinpath("releases.json").read_text()
    own = {name: entry for name, entry in json.loads(text).items() if not name.startswith("_")}
    return saelens_releases() | own


def match_release(entry: dict[str, Any], folder: str) -> Found | None:
    """The hookpoint, width and L0 a release's naming gives `folder`, or None if no pattern matches it."""
    if (sae := entry.get("paths", {}).get(folder)) is not None:
        return Found(entry["format"], sae["hookpoint"], sae["width"], sae["l0"])
    for rule in entry["folders"]:
        regex = re.escape(rule["pattern"])
        for field, group in (("layer", r"\d+"), ("width", r"\d+[km]?"), ("l0", r"\d+")):
            regex = regex.replace(re.escape("{" + field + "}"), f"(?P<{field}>{group})")
        if match := re.fullmatch(regex, folder):
            groups = match.groupdict()
            width = parse_width(groups["width"]) if "width" in groups else entry.get("width")
            l0 = float(groups["l0"]) if "l0" in groups else None
            return Found(entry["format"], rule["hookpoint"].format(layer=groups.get("layer")), width, l0)
    return None


class Candidate(NamedTuple):
    folder: str  # relative to the root of the repo or folder
    found: Found


def choose(candidates: list[Candidate], wanted, width, l0, source: str) -> dict[str, Candidate]:
    """One candidate per hookpoint: the wanted ones (all by default), narrowed by width and L0."""
    keep = [c for c in candidates if width is None or c.found.num_latents == width]
    keep = [c for c in keep if l0 is None or c.found.l0 is None or abs(c.found.l0 - l0) < 0.5]
    by_hookpoint: dict[str, list[Candidate]] = {}
    for c in keep:
        by_hookpoint.setdefault(c.found.hookpoint or c.folder, []).append(c)
    if wanted is not None and (missing := [h for h in wanted if h not in by_hookpoint]):
        everything = sorted({c.found.hookpoint or c.folder for c in candidates}, key=natural_key)
        widths = sorted({c.found.num_latents for c in candidates if c.found.num_latents})
        narrowed = (
            f" with width={width}, l0={l0} (its widths: {widths})" if width is not None or l0 is not None else ""
        )
        raise HookpointError(
            f"{source} has no SAE for hookpoint(s) {missing}{narrowed}. It has SAEs for: "
            f"{', '.join(everything[:30]) or 'none'}. Pass some of those as `hookpoints` (`--hookpoints` on the "
            "command line)."
        )
    chosen = {}
    for hookpoint in wanted if wanted is not None else sorted(by_hookpoint, key=natural_key):
        options = sorted(by_hookpoint[hookpoint], key=lambda c: natural_key(c.folder))
        if len(options) > 1:
            listed = "; ".join(f"{c.folder} (width {c.found.num_latents}, l0 {c.found.l0})" for c in options[:12])
            raise ArgumentError(
                f"{source} has {len(options)} SAEs for {hookpoint!r}: {listed}. Pass `width=` and/or `l0=` to "
                f"pick one, or load one folder: `SaeModel.from_pretrained({source!r}, "
                f"subfolder={options[0].folder!r})`."
            )
        chosen[hookpoint] = options[0]
    return chosen
