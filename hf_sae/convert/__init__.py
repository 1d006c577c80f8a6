"""Other projects' SAE formats in and out: SAELens, sparsify, dictionary_learning, Gemma Scope and Llama Scope are
read, detected from their files; SAELens, sparsify and hf_sae's own format are written.

`SaeModel.from_pretrained` and `load_saes` call `load_converted` and `load_converted_saes` here, so no format is ever
named by the user. A release name from the shipped registry (`releases.json`, e.g. `gemma-scope-2b-pt-res`) stands
for its Hub repo, its base model and the hookpoint of each of its folders.
"""

import functools
import json
import os
import re
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

import torch

from ..errors import ArgumentError, HookpointError, HubError, SaeConfigError, SaeNotFoundError
from ..layout import CONFIG, find_sae_folders, natural_key, read_json
from ..modeling_sae import SaeModel
from .readers import DESCRIBERS, MARKERS, READERS, Found, files_in, format_of, parse_width
from .writers import WRITERS, sparsify_folder_name

FORMATS = ("hf_sae", *MARKERS)
EXPORT_FORMATS = tuple(WRITERS)


# ---- the registry ---------------------------------------------------------------------------------------------------


@functools.cache
def releases() -> dict[str, dict[str, Any]]:
    """Known releases by name: `repo_id`, `format`, `base_model`, `folders` (`pattern` -> `hookpoint`), `width`."""
    text = resources.files(__package__).joinpath("releases.json").read_text()
    return {name: entry for name, entry in json.loads(text).items() if not name.startswith("_")}


def _match_release(entry: dict[str, Any], folder: str) -> Found | None:
    """The hookpoint, width and L0 a release's naming gives `folder`, or None if no pattern matches it."""
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


# ---- one folder -----------------------------------------------------------------------------------------------------


def detect_format(folder: str | os.PathLike) -> str | None:
    """The format of an SAE folder (`hf_sae`, `saelens`, `sparsify`, `dictionary_learning`, `gemma_scope`,
    `llama_scope`), from the files in it; None when it holds none of them."""
    folder = Path(folder)
    if (folder / CONFIG).is_file() and read_json(folder / CONFIG).get("model_type") == "hf_sae":
        return "hf_sae"
    return format_of(files_in(folder)) if folder.is_dir() else None


def read_sae(
    folder: str | os.PathLike, *, hint: str | None = None, hookpoint: str | None = None, base_model: str | None = None
) -> SaeModel:
    """
    An `SaeModel` from a folder in any known format, every tensor mapped and every scale folded in.

    Args:
        folder: the SAE's folder.
        hint: a release or repo name that says what the folder's own files do not (Gemma Scope's site).
        hookpoint, base_model: override what the files say (a registry entry knows better).
    """
    folder = Path(folder)
    fmt = detect_format(folder)
    if fmt == "hf_sae":
        return SaeModel.from_pretrained(folder)
    if fmt is None:
        seen = sorted(files_in(folder))[:20] if folder.is_dir() else "nothing: it is not a folder"
        raise SaeNotFoundError(
            f"{folder} is in no SAE format hf_sae knows. It knows {', '.join(f'{f} ({_marks(f)})' for f in FORMATS)}; "
            f"it saw {seen}. Point at the folder that holds one SAE's files."
        )
    reader = READERS[fmt]
    config, tensors = reader(folder, hint) if fmt == "gemma_scope" else reader(folder)
    overrides = {k: v for k, v in (("hookpoint", hookpoint), ("base_model_name_or_path", base_model)) if v}
    if overrides:
        config = type(config)(**{**config.to_dict(), **overrides})
    with torch.device("meta"):
        sae = SaeModel(config)
    sae.load_state_dict({k: v.contiguous() for k, v in tensors.items()}, strict=True, assign=True)
    sae.config._name_or_path = str(folder)
    sae.name_or_path = str(folder)
    return sae.eval()


def _marks(fmt: str) -> str:
    return "config.json with model_type hf_sae" if fmt == "hf_sae" else " + ".join(MARKERS[fmt])


def load_converted(name: str | os.PathLike, *, subfolder: str | None = None, **hub_kwargs) -> SaeModel | None:
    """For `SaeModel.from_pretrained`: the SAE at `name` (local or Hub) when it is in another format; None when
    it is hf_sae's own or cannot be told, so that the ordinary loading goes on and reports."""
    local = Path(name).expanduser() / (subfolder or "")
    if local.is_dir():
        return None if detect_format(local) in (None, "hf_sae") else read_sae(local)
    if Path(name).expanduser().exists() or str(name).count("/") > 1 or str(name).startswith((".", "/")):
        return None
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, HFValidationError

    repo = str(name)
    kwargs = {k: hub_kwargs.get(k) for k in ("revision", "token", "cache_dir")}
    kwargs["local_files_only"] = bool(hub_kwargs.get("local_files_only"))
    try:
        config = hf_hub_download(repo, CONFIG, subfolder=subfolder, **kwargs)
        if read_json(Path(config)).get("model_type") == "hf_sae":
            return None
    except EntryNotFoundError:
        pass
    except (HfHubHTTPError, HFValidationError, OSError, ValueError):
        return None
    try:
        files = _repo_files(repo, **kwargs)
    except (HfHubHTTPError, OSError):
        return None
    prefix = f"{subfolder.strip('/')}/" if subfolder else ""
    if format_of({f.removeprefix(prefix) for f in files if f.startswith(prefix)}) is None:
        return None
    root = Path(snapshot_download(repo, allow_patterns=[f"{prefix}*"], **kwargs))
    return read_sae(root / (subfolder or ""), hint=repo)


# ---- many folders: load_saes ---------------------------------------------------------------------------------------


class _Candidate(NamedTuple):
    folder: str  # relative to the root
    found: Found


def _sae_folders(files: Iterable[str]) -> dict[str, str]:
    """{folder: format} for every folder whose files mark a foreign format, from a list of relative paths."""
    by_folder: dict[str, set[str]] = {}
    for path in files:
        parts = path.split("/")
        for i in range(len(parts)):  # every ancestor, so that `checkpoints/final.safetensors` counts for its folder
            by_folder.setdefault("/".join(parts[:i]), set()).add("/".join(parts[i:]))
    found = {folder: fmt for folder, names in by_folder.items() if (fmt := format_of(names))}
    return {f: fmt for f, fmt in found.items() if not any(f.startswith(p + "/") for p in found if p and p != f)}


def load_converted_saes(
    source: str | os.PathLike,
    wanted: list[str] | None,
    *,
    width: int | None = None,
    l0: float | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
) -> dict[str, SaeModel] | None:
    """For `load_saes`: SAEs by hookpoint from a release name, or a local folder or Hub repo in another format,
    downloading only the chosen folders; None when `source` is in hf_sae's own layout."""
    entry = releases().get(str(source))
    local = Path(source).expanduser()
    if entry is None and local.is_dir():
        if any(detect_format(folder) == "hf_sae" for folder in find_sae_folders(local)[0].values()):
            return None  # hf_sae's own layout (a sparsify run also has a config.json at its top)
        folders = _sae_folders(files_in(local))
        if not folders:
            return None
        chosen = _choose(_describe_local(local, folders, str(source)), wanted, width, l0, str(source))
        return {h: read_sae(local / c.folder, hint=str(source), hookpoint=h) for h, c in chosen.items()}
    return _load_from_hub(entry["repo_id"] if entry else str(source), entry, wanted, width, l0,
                          revision, token, cache_dir, local_files_only, str(source))  # fmt: skip


def _describe_local(root: Path, folders: dict[str, str], hint: str) -> list[_Candidate]:
    candidates = []
    for folder, fmt in folders.items():
        describe = DESCRIBERS[fmt]
        found = describe(root / folder, hint) if fmt == "gemma_scope" else describe(root / folder)
        candidates.append(_Candidate(folder, found))
    return candidates


def _load_from_hub(repo, entry, wanted, width, l0, revision, token, cache_dir, local_files_only, source):
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, RepositoryNotFoundError

    kwargs = {"revision": revision, "token": token, "cache_dir": cache_dir, "local_files_only": local_files_only}
    try:
        api = HfApi(token=token)
        files = _repo_files(repo, **kwargs)
    except (HFValidationError, RepositoryNotFoundError):
        if entry is None:
            return None  # not a repo we can read: the ordinary path reports it
        raise HubError(f"Release {source!r} lives in {repo}, which was not found on {api.endpoint}.") from None
    except (HfHubHTTPError, OSError):  # offline: not in the Hub cache either
        return None
    folders = _sae_folders(files)
    if not folders:
        if entry is not None:
            raise SaeNotFoundError(f"Release {source!r} ({repo}) holds no {entry['format']} SAE folder.")
        return None
    if entry is not None:
        candidates = [_Candidate(f, m) for f in folders if (m := _match_release(entry, f)) is not None]
    else:  # the small files say where each SAE reads
        small = [f"{f}/{name}" for f in folders for name in ("cfg.json", CONFIG, "hyperparams.json")]
        small += ["config.json"] * any(fmt == "sparsify" for fmt in folders.values())  # a sparsify run's base model
        root = Path(snapshot_download(repo, allow_patterns=small, **kwargs))
        candidates = _describe_local(root, folders, repo)
    chosen = _choose(candidates, wanted, width, l0, f"{source} ({repo})" if entry else repo)
    patterns = [f"{c.folder}/*" for c in chosen.values()] + ["config.json"]
    root = Path(snapshot_download(repo, allow_patterns=patterns, **kwargs))
    base_model = entry.get("base_model") if entry else None
    return {h: read_sae(root / c.folder, hint=repo, hookpoint=h, base_model=base_model) for h, c in chosen.items()}


def _repo_files(repo: str, *, revision, token, cache_dir, local_files_only: bool) -> list[str]:
    """The repo's files: from the Hub, or offline (`local_files_only`) those already in the Hub cache."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.file_download import repo_folder_name

    if not local_files_only:
        return HfApi(token=token).list_repo_files(repo, revision=revision)
    # The cached snapshot's own files: snapshot_download offline refuses a snapshot holding only some folders.
    folder = Path(cache_dir or constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo, repo_type="model")
    ref = folder / "refs" / (revision or "main")
    root = folder / "snapshots" / (ref.read_text().strip() if ref.is_file() else revision or "main")
    if not root.is_dir():
        raise FileNotFoundError(f"{repo} at {revision or 'main'} is not in the Hub cache.")
    return [path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file()]


def _choose(candidates: list[_Candidate], wanted, width, l0, source: str) -> dict[str, _Candidate]:
    """One candidate per hookpoint: the wanted ones (all by default), narrowed by width and L0."""
    keep = [c for c in candidates if width is None or c.found.num_latents == width]
    keep = [c for c in keep if l0 is None or c.found.l0 is None or abs(c.found.l0 - l0) < 0.5]
    by_hookpoint: dict[str, list[_Candidate]] = {}
    for c in keep:
        by_hookpoint.setdefault(c.found.hookpoint or c.folder, []).append(c)
    available = sorted(by_hookpoint, key=natural_key)
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
    for hookpoint in wanted if wanted is not None else available:
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


# ---- export ---------------------------------------------------------------------------------------------------------


def export_sae(sae: SaeModel, folder: str | os.PathLike, to: str) -> Path:
    """Write `sae` to `folder` in format `to` (`saelens`, `sparsify` or `hf_sae`); the folder is replaced."""
    if to not in WRITERS:
        raise ArgumentError(f"`to` must be one of {list(WRITERS)}; got {to!r}.")
    return WRITERS[to](sae, Path(folder))


def convert(src: str | os.PathLike, dst: str | os.PathLike, to: str, *, overwrite: bool = False, **load_kwargs):
    """
    Convert the SAEs in `src` (any format, a folder, a Hub repo or a release name) to format `to` under `dst`.

    One SAE goes to `dst` itself; several go to `dst/<hookpoint>` (sparsify: its relative names, `layers.3`).
    Returns `{hookpoint: folder}`.
    """
    from ..hub import load_saes

    if to not in WRITERS:
        raise ArgumentError(f"--to must be one of {list(WRITERS)}; got {to!r}.")
    dst = Path(dst)
    if dst.exists() and any(dst.iterdir()) and not overwrite:
        raise ArgumentError(f"{dst} exists and is not empty. Choose another destination, or pass overwrite=True.")
    local = Path(src).expanduser()
    if local.is_dir() and detect_format(local):  # one SAE folder
        sae = read_sae(local)
        saes = {sae.config.hookpoint or "sae": sae}
    else:
        saes = load_saes(src, **load_kwargs)
    if not saes:
        raise SaeNotFoundError(f"Found no SAE in {src}.")
    if len(saes) == 1:
        return {h: export_sae(s, dst, to) for h, s in saes.items()}
    if not all(s.config.hookpoint for s in saes.values()):
        raise SaeConfigError(f"Every SAE in {src} needs a hookpoint to name its folder under {dst}.")
    name = sparsify_folder_name if to == "sparsify" else (lambda s: s.config.hookpoint)
    return {h: export_sae(s, dst / name(s), to) for h, s in saes.items()}


__all__ = ["EXPORT_FORMATS", "FORMATS", "convert", "detect_format", "export_sae", "read_sae", "releases"]
