"""The SAEs of a release of SAELens' registry whose SAEs are single files of their own layout (Qwen Scope, Goodfire,
...; `formats.release_files`): chosen by hookpoint (with width and L0) or by SAELens' SAE ids, only their files
downloaded, each read into a config and tensors. A release whose loader hf_sae refuses says why before any download.
Releases of folders (SAELens, Gemma Scope, ...) are located by `hub_client` instead."""

import glob
from pathlib import Path
from typing import Any

from torch import Tensor

from .configuration_sae import SaeConfig
from .errors import ArgumentError, SaeConfigError, SaeNotFoundError
from .formats import Candidate, choose, match_release, releases
from .formats.release_files import FILE_FORMATS, read_release_file, release_files
from .hub_client import HubOptions, hub_errors


def _chosen(name: str, entry: dict[str, Any], wanted, width, l0) -> dict[str, Candidate]:
    """`{hookpoint: Candidate}`: SAELens' SAE ids or paths name SAEs exactly; otherwise by hookpoint, width and L0."""
    candidates = [Candidate(path, found) for path in entry["paths"] if (found := match_release(entry, path))]
    by_id = {entry["paths"][c.folder]["id"]: c for c in candidates} | {c.folder: c for c in candidates}
    if wanted is not None and all(w in by_id for w in wanted):
        return {by_id[w].found.hookpoint or by_id[w].folder: by_id[w] for w in wanted}
    return choose(candidates, wanted, width, l0, f"{name} ({entry['repo_id']})")


def by_sae_ids(name: str, wanted: list[str] | None, width, l0) -> tuple[list[str] | None, int | None, float | None]:
    """`(hookpoints, width, l0)` for SAELens' SAE ids (or paths) of a release of folders, as hf_sae chooses among a
    repo's SAEs; the arguments unchanged where `wanted` holds no such ids."""
    entry = releases().get(name) or {}
    paths = entry.get("paths", {})
    by_id = {sae["id"]: path for path, sae in paths.items()} | {path: path for path in paths}
    if not wanted or not all(w in by_id for w in wanted):
        return wanted, width, l0
    found = [match_release(entry, by_id[w]) for w in wanted]
    if any(f is None or f.hookpoint is None for f in found) or len({(f.num_latents, f.l0) for f in found}) > 1:
        raise ArgumentError(
            f"SAE ids {wanted} of release {name!r} differ in width or L0, or name no hookpoint: load them one at a "
            "time (`load_saes(release, hookpoints=[sae_id])`), or by hookpoint with `width=` and `l0=`."
        )
    return [f.hookpoint for f in found], found[0].num_latents, found[0].l0


def read_release_saes(
    name: str, wanted: list[str] | None, options: HubOptions, width=None, l0=None
) -> dict[str, tuple[SaeConfig, dict[str, Tensor], Path]] | None:
    """`{hookpoint: (config, tensors, folder)}` of the chosen SAEs of release `name`; None where `name` is no release
    of single files (a folder, a repo, a release of folders)."""
    entry = releases().get(name)
    if entry is None or not (entry.get("refused") or entry["format"] in FILE_FORMATS):
        return None
    repo_id, fmt = entry["repo_id"], entry["format"]
    if reason := entry.get("refused"):
        raise SaeConfigError(f"Release {name!r} ({repo_id}, SAELens loader {entry['loader']!r}) is refused: {reason}")
    chosen = _chosen(name, entry, wanted, width, l0)
    needed = [file for c in chosen.values() for file in release_files(fmt, c.folder)]
    with hub_errors(repo_id, options.revision, options.token):
        root = options.download(repo_id, [glob.escape(file) for file in needed])
    if missing := [file for file in needed if not (root / file).is_file()]:
        raise SaeNotFoundError(
            f"Release {name!r}: repo {repo_id} lacks {missing}, which SAELens' registry names. The repo has changed "
            "since the registry was written, or the offline cache holds only part of it: download it again."
        )
    return {
        hookpoint: (
            *read_release_file(root, fmt, c.folder, entry["paths"][c.folder], repo_id, entry["base_model"]),
            root / c.folder,
        )  # fmt: skip
        for hookpoint, c in chosen.items()
    }
