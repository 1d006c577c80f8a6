"""Save, push and load several SAEs at once, with their feature metadata and a model card, in one Hub commit.

The layout (`layout`) is the same on disk and on the Hub, and `save_saes` is its one writer: a training run saves
through it too. A single SAE (config.json at the top, from `SaeModel.save_pretrained` or `push_to_hub`) loads the
same way.
"""

import glob
import json
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import (
    CommitInfo,
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    ModelCard,
    constants,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import (
    HfHubHTTPError,
    HFValidationError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
    RevisionResolutionError,
)
from huggingface_hub.utils import validate_repo_id
from safetensors import SafetensorError

from .configuration_sae import SaeConfig
from .errors import (
    ArgumentError,
    HfSaeError,
    HookpointError,
    HubError,
    SaeConfigError,
    SaeNotFoundError,
    WeightsError,
    WriteError,
)
from .layout import (
    CONFIG,
    FEATURES,
    METRICS,
    README,
    WEIGHTS,
    find_sae_folders,
    looks_like_local_path,
    missing_path_error,
    natural_key,
    read_json,
    refuse_if_no_space,
    safetensors_shapes,
    write_failure,
    write_json,
    write_text,
)
from .model_card import card_data, render_card
from .modeling_sae import SaeModel, as_torch_dtype

SaesLike = SaeModel | Mapping[str, SaeModel] | Iterable[SaeModel]
CARD_ARGUMENTS = ("datasets", "license", "tags")  # the model card metadata a push takes


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The HTTP client's connection and timeout errors (huggingface_hub speaks httpx2, older versions httpx)."""
    errors = []
    for name in ("httpx2", "httpx"):
        try:
            errors.append(__import__(name).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


TRANSPORT_ERRORS = _transport_errors()


@contextmanager
def network_errors(action: str) -> Iterator[None]:
    """Turn a connection failure (endpoint down, DNS, timeout) into a `HubError` that names the endpoint."""
    try:
        yield
    except TRANSPORT_ERRORS as error:
        raise HubError(
            f"{action} failed: the Hub endpoint {constants.ENDPOINT} could not be reached ({type(error).__name__}: "
            f"{error}). Check the network connection and HF_ENDPOINT; to use only what is already in the cache, set "
            "HF_HUB_OFFLINE=1."
        ) from error


def save_saes(
    saes: SaesLike,
    output_dir: str | os.PathLike,
    *,
    features: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Mapping[str, Any]] | None = None,
    datasets: str | list[str] | None = None,
    license: str | None = None,
    tags: list[str] | None = None,
) -> Path:
    r"""
    Save SAEs to `output_dir`, one subfolder per hookpoint, with feature metadata, metrics and a README model card.

    Atomic: everything is written to a staging folder inside `output_dir` and checked, then each hookpoint folder is
    swapped in by a rename. SAEs of other hookpoints already there are kept; a failure leaves `output_dir` as it was.

    Args:
        saes (`dict[str, SaeModel]`, `list[SaeModel]` or `SaeModel`): SAEs by hookpoint, or SAEs whose
            `config.hookpoint` names it.
        output_dir (`str` or `os.PathLike`): created if needed.
        features (`dict[str, Any]`, *optional*): per hookpoint, a folder of feature metadata to copy, or an object
            with `save_pretrained(path)` or `save(path)`. An SAE loaded by [`load_saes`] brings its own along.
        metrics (`dict[str, dict]`, *optional*): per hookpoint, evaluation metrics (`fvu`, `l0`, ...) for
            `<hookpoint>/metrics.json` and the card; may hold `train_tokens` (`layout` names the keys).
        datasets, license, tags: model card metadata (the training datasets, a license id, extra tags).

    Example:

    ```python
    >>> save_saes({"model.layers.6": sae6, "model.layers.8": sae8}, "out", metrics={"model.layers.6": {"fvu": 0.2}})
    PosixPath('out')
    ```
    """
    saes, output_dir = _by_hookpoint(saes), Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if (output_dir / CONFIG).is_file():
        raise SaeNotFoundError(
            f"{output_dir} holds a single SAE (config.json at the top); save_saes writes one subfolder per hookpoint "
            "and the two layouts would mix. Choose another `output_dir`."
        )
    need = sum(t.numel() * t.element_size() for sae in saes.values() for t in sae.state_dict().values())
    refuse_if_no_space(output_dir, need, f"Saving {len(saes)} SAE(s)")
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=output_dir))
    try:
        for hookpoint, sae in saes.items():
            _stage_sae(
                staging / hookpoint, sae, hookpoint, (features or {}).get(hookpoint), (metrics or {}).get(hookpoint)
            )
        folders = find_sae_folders(output_dir)[0] | {h: staging / h for h in saes}
        card = render_card(
            folders,
            output_dir.resolve().name,
            None,
            card_data(output_dir / README),
            datasets=datasets,
            license=license,
            tags=tags,
        )
        write_text(staging / README, str(card))
        _swap_in(staging, output_dir, list(saes))
        os.replace(staging / README, output_dir / README)
    except (OSError, SafetensorError) as error:  # safetensors reports a full disk as its own error
        if isinstance(error, HfSaeError):
            raise
        raise WriteError(
            f"Saving the SAEs to {output_dir}: {write_failure(error, output_dir, need)}. The temporary folder was "
            f"removed and the SAEs already in {output_dir} are intact."
        ) from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output_dir


def push_saes_to_hub(
    repo_id: str,
    saes_or_dir: SaesLike | str | os.PathLike,
    *,
    private: bool = False,
    token: str | bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    commit_description: str | None = None,
    create_pr: bool = False,
    model_card: str | ModelCard | None = None,
    **card_and_save_kwargs,
) -> CommitInfo:
    r"""
    Push SAEs with their feature metadata, metrics and a README model card to a Hub repo, in one commit.

    Everything is checked before anything is uploaded: each config loads, each weights file is complete and agrees
    with its config. A commit is all or nothing, so a failed push leaves the repo as it was. Hookpoints already in the
    repo and not pushed are kept (and described by the card); files a pushed hookpoint no longer has are deleted.

    Args:
        repo_id (`str`): `"user/name"` or `"org/name"`; created if needed.
        saes_or_dir: SAEs as for [`save_saes`], or a folder written by it or by `SaeModel.save_pretrained`.
        private (`bool`, defaults to `False`): visibility of a repo this call creates.
        token (`str`, *optional*): a write token; the logged-in one by default.
        revision (`str`, *optional*): the branch to commit to, created from `main` if needed.
        commit_message, commit_description, create_pr: as for `HfApi.create_commit`.
        model_card (`str` or `ModelCard`, *optional*): pushed as is instead of the rendered card.
        card_and_save_kwargs: `datasets`, `license`, `tags`, and with SAEs `features` and `metrics`, as for
            [`save_saes`].

    Example:

    ```python
    >>> push_saes_to_hub("me/smollm2-saes", {"model.layers.6": sae6, "model.layers.8": sae8})
    CommitInfo(commit_url='https://huggingface.co/me/smollm2-saes/commit/...', ...)
    ```
    """
    if not isinstance(repo_id, str) or (Path(repo_id).is_dir() and find_sae_folders(Path(repo_id))[0]):
        raise ArgumentError(
            f"`repo_id` must be a Hub repo id like 'you/name'; got {repo_id!r}. The SAEs come second: "
            "`push_saes_to_hub(repo_id, saes_or_dir)`."
        )
    if not isinstance(saes_or_dir, str | os.PathLike):
        card_kwargs = {k: v for k, v in card_and_save_kwargs.items() if k in CARD_ARGUMENTS}
        with tempfile.TemporaryDirectory(prefix="hf-sae-push-") as tmp:
            save_saes(saes_or_dir, tmp, **card_and_save_kwargs)
            return push_saes_to_hub(
                repo_id,
                tmp,
                private=private,
                token=token,
                revision=revision,
                commit_message=commit_message,
                commit_description=commit_description,
                create_pr=create_pr,
                model_card=model_card,
                **card_kwargs,
            )
    directory = Path(saes_or_dir)
    if unknown := set(card_and_save_kwargs) - set(CARD_ARGUMENTS):
        raise TypeError(f"{sorted(unknown)} apply when pushing SAEs, not a folder: save them with `save_saes` first.")
    folders, single = find_sae_folders(directory) if directory.is_dir() else ({}, False)
    if not folders:
        raise SaeNotFoundError(
            f"Found no SAE in {directory}: expected {directory}/<hookpoint>/{CONFIG} (from `save_saes`) or "
            f"{directory}/{CONFIG} (from `SaeModel.save_pretrained`)."
        )
    for hookpoint, folder in folders.items():
        _check_sae_folder(folder, None if single else hookpoint)
    api = HfApi(token=token)
    try:
        with network_errors(f"Pushing to {repo_id!r}"):
            repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
            if revision is not None and not revision.startswith("refs/pr/"):
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            operations = _push_operations(
                api, repo_id, revision, directory, folders, single, model_card, card_and_save_kwargs
            )
            message = commit_message or f"Upload {len(folders)} SAE{'s' * (len(folders) > 1)} with hf_sae"
            with warnings.catch_warnings():  # feature tables are parquet files in a model repo on purpose
                warnings.filterwarnings("ignore", message=".*commit a data file.*", category=UserWarning)
                return api.create_commit(
                    repo_id,
                    operations,
                    commit_message=message,
                    commit_description=commit_description,
                    revision=revision,
                    create_pr=create_pr,
                )
    except (HfHubHTTPError, OSError, RuntimeError) as error:  # the client wraps a failed LFS upload in RuntimeError
        if isinstance(error, HubError | SaeNotFoundError | WeightsError):
            raise
        raise HubError(
            f"Pushing the SAEs for {', '.join(folders)} to {repo_id}{f' (branch {revision})' * bool(revision)} "
            f"failed: {_reason(error)}. A Hub commit is all or nothing, so the repo holds no part of this push. Fix "
            "the cause (token, network, repo name) and call push_saes_to_hub again."
        ) from error


def load_saes(
    repo_or_dir: str | os.PathLike,
    hookpoints: str | list[str] | None = None,
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    width: int | None = None,
    l0: float | None = None,
) -> dict[str, SaeModel]:
    r"""
    Load SAEs by hookpoint from a Hub repo or a local folder, downloading only what those hookpoints need.

    Works for a repo or folder of hookpoint subfolders and for a single SAE (config.json at the top). Feature
    metadata comes along: it is in `Path(sae.name_or_path) / "features"` when the repo has it. Repos and folders in
    other formats (SAELens, sparsify, dictionary_learning, Gemma Scope, Llama Scope) are detected and converted, and
    a release name of `hf_sae.convert.releases()` (`gemma-scope-2b-pt-res`) stands for its repo.

    Args:
        repo_or_dir (`str` or `os.PathLike`): a local folder, or a Hub repo id.
        hookpoints (`str` or `list[str]`, *optional*): which SAEs; all by default.
        revision (`str`, *optional*): branch, tag or commit of a Hub repo; `main` by default.
        token (`str`, *optional*): for private repos; the logged-in one by default.
        device, dtype: where and in which dtype to put the SAEs.
        cache_dir, local_files_only: as for `snapshot_download`.
        width, l0 (*optional*): which SAE where a release has several per hookpoint (Gemma Scope's widths and L0s).

    Returns:
        `dict[str, SaeModel]`: SAEs by hookpoint, in natural order (layer 2 before layer 10). A single SAE whose config
        names no hookpoint is under `"sae"`.

    Example:

    ```python
    >>> saes = load_saes("me/smollm2-saes", hookpoints=["model.layers.6"])
    >>> with SaeHooks(lm, saes).record() as recorder:
    ...     lm(input_ids)
    ```
    """
    with network_errors(f"Loading SAEs from {str(repo_or_dir)!r}"):
        return _load_saes(repo_or_dir, hookpoints, revision, token, device, dtype, cache_dir, local_files_only,
                          width, l0)  # fmt: skip


def _load_saes(repo_or_dir, hookpoints, revision, token, device, dtype, cache_dir, local_files_only, width, l0):
    wanted = hookpoints
    if isinstance(hookpoints, str | Iterable):
        wanted = [hookpoints] if isinstance(hookpoints, str) else list(hookpoints)
    if wanted is not None and (not isinstance(wanted, list) or not all(isinstance(h, str) for h in wanted)):
        raise ArgumentError(
            f"`hookpoints` must be a hookpoint name, a list of them or None (all); got {hookpoints!r}, e.g. "
            "`hookpoints=['model.layers.6']`."
        )
    root, source = Path(repo_or_dir).expanduser(), str(repo_or_dir)
    _refuse_missing_local_path(source)
    from .convert import load_converted_saes  # convert loads through this module

    hub_kwargs = {"revision": revision, "token": token, "cache_dir": cache_dir, "local_files_only": local_files_only}
    if (converted := load_converted_saes(repo_or_dir, wanted, width=width, l0=l0, **hub_kwargs)) is not None:
        return {h: sae.to(device=device, dtype=as_torch_dtype(dtype)) for h, sae in converted.items()}
    if root.is_dir():
        if revision is not None:
            raise ArgumentError(f"`revision` applies to Hub repos, but {root} is a local folder. Drop `revision`.")
    else:
        root = _download(source, wanted, revision, token, cache_dir, local_files_only)
    folders, single = find_sae_folders(root)
    if not folders:
        raise SaeNotFoundError(
            f"Found no SAE in {source}: expected <hookpoint>/{CONFIG} folders or a {CONFIG} at the top."
        )
    saes = {}
    for hookpoint in _select(folders, wanted, source):
        _check_sae_folder(folders[hookpoint], None if single else hookpoint)
        try:
            sae = SaeModel.from_pretrained(folders[hookpoint], **({"dtype": dtype} if dtype is not None else {}))
        except OSError as error:
            raise WeightsError(f"Could not load the SAE in {folders[hookpoint]}: {error}. Re-save it.") from error
        saes[hookpoint] = sae.to(device) if device is not None else sae
    return saes


# ---- saving ---------------------------------------------------------------------------------------------------------


def _by_hookpoint(saes: SaesLike) -> dict[str, SaeModel]:
    saes = [saes] if isinstance(saes, SaeModel) else saes
    pairs = list(saes.items()) if isinstance(saes, Mapping) else [(sae.config.hookpoint, sae) for sae in saes]
    if not pairs:
        raise SaeNotFoundError("No SAEs given: pass a dict `{hookpoint: sae}` or a list of SAEs.")
    result: dict[str, SaeModel] = {}
    for hookpoint, sae in pairs:
        if not isinstance(sae, SaeModel):
            raise SaeConfigError(f"Expected SaeModel instances, got {type(sae).__name__} for {hookpoint!r}.")
        if not hookpoint:
            raise SaeConfigError("An SAE in the list has no `config.hookpoint`; pass a dict `{hookpoint: sae}`.")
        if not re.fullmatch(r"[^/\\.][^/\\]*", hookpoint) or hookpoint == README:
            raise HookpointError(
                f"Hookpoint {hookpoint!r} cannot name a folder: use a module path such as 'model.layers.6'."
            )
        if sae.config.hookpoint not in (None, hookpoint):
            raise SaeConfigError(
                f"The SAE given for {hookpoint!r} was trained on {sae.config.hookpoint!r} (its `config.hookpoint`). "
                "Use that key, or build the config with the right hookpoint."
            )
        if hookpoint in result:
            raise HookpointError(f"Two SAEs for hookpoint {hookpoint!r}; a repo holds one SAE per hookpoint.")
        result[hookpoint] = sae
    return result


def _stage_sae(folder: Path, sae: SaeModel, hookpoint: str, features: Any, metrics: Mapping | None) -> None:
    sae.save_pretrained(folder, model_card=False)  # the card of the whole repo goes at its top
    if sae.config.hookpoint is None:  # the folder names the hookpoint; let the config say it too
        config = json.loads((folder / CONFIG).read_text())
        (folder / CONFIG).write_text(json.dumps(config | {"hookpoint": hookpoint}, indent=2, sort_keys=True) + "\n")
    source = Path(sae.name_or_path) if sae.name_or_path else None
    if features is None and source is not None and (source / FEATURES).is_dir():
        features = source / FEATURES  # an SAE loaded with its feature metadata keeps it
    if isinstance(features, str | os.PathLike):
        if not Path(features).is_dir():
            raise SaeNotFoundError(f"Feature metadata for {hookpoint!r} should be a folder; {features} is not one.")
        shutil.copytree(features, folder / FEATURES)
    elif features is not None:
        save = getattr(features, "save_pretrained", None) or getattr(features, "save", None)
        if save is None:
            raise SaeConfigError(
                f"Feature metadata for {hookpoint!r} must be a folder or have `save_pretrained(path)`; got "
                f"{type(features).__name__}."
            )
        save(folder / FEATURES)
    if metrics is not None:
        write_json(folder / METRICS, dict(metrics))
    elif source is not None and (source / METRICS).is_file():
        shutil.copy2(source / METRICS, folder / METRICS)
    _check_sae_folder(folder, hookpoint)


def _swap_in(staging: Path, output_dir: Path, hookpoints: list[str]) -> None:
    """Rename each staged hookpoint folder into `output_dir`; on any failure, put back what was there."""
    done: list[tuple[Path, Path | None]] = []
    try:
        for hookpoint in hookpoints:
            target, old = output_dir / hookpoint, staging / ".old" / hookpoint
            if target.exists():
                old.parent.mkdir(exist_ok=True)
                target.rename(old)
            done.append((target, old))
            (staging / hookpoint).rename(target)
    except BaseException:
        for target, old in reversed(done):
            if target.exists():
                shutil.rmtree(target)
            if old.exists():
                old.rename(target)
        raise


# ---- checks ---------------------------------------------------------------------------------------------------------


def _check_sae_folder(folder: Path, hookpoint: str | None = None) -> SaeConfig:
    """Refuse a folder whose config does not load or whose weights are corrupt or disagree with it."""
    if not (folder / CONFIG).is_file():
        raise SaeConfigError(
            f"{folder} has no {CONFIG}. An SAE folder holds {CONFIG} and {WEIGHTS}, as `save_saes` or "
            "`SaeModel.save_pretrained` write them: save the SAE again."
        )
    if (model_type := read_json(folder / CONFIG).get("model_type")) != SaeConfig.model_type:
        raise SaeConfigError(f"{folder / CONFIG} has model_type {model_type!r}, not {SaeConfig.model_type!r}.")
    config = SaeConfig.from_pretrained(folder)
    if hookpoint is not None and config.hookpoint not in (None, hookpoint):
        raise SaeConfigError(
            f"{folder} is the folder of hookpoint {hookpoint!r} but its config says {config.hookpoint!r}. Rename the "
            "folder or fix config.json."
        )
    if (folder / METRICS).is_file():
        read_json(folder / METRICS)
    if not (folder / WEIGHTS).is_file():
        if (folder / f"{WEIGHTS}.index.json").is_file():
            return config  # sharded weights: from_pretrained checks them
        raise WeightsError(f"{folder} has {CONFIG} but no {WEIGHTS}: the save or upload was incomplete. Do it again.")
    with torch.device("meta"):
        expected = {name: tuple(t.shape) for name, t in SaeModel(config).state_dict().items()}
    saved = safetensors_shapes(folder / WEIGHTS)
    if missing := sorted(set(expected) - set(saved)):
        raise WeightsError(f"{folder / WEIGHTS} lacks {missing}, which a {config.architecture!r} SAE needs.")
    if wrong := [f"{n}: {saved[n]} (expected {expected[n]})" for n in sorted(expected) if saved[n] != expected[n]]:
        raise WeightsError(
            f"{folder / WEIGHTS} disagrees with its config (d_in={config.d_in}, num_latents={config.num_latents}): "
            f"{'; '.join(wrong)}. The weights and config.json do not belong together; save the SAE again."
        )
    return config


def _select(available: Iterable[str], wanted: list[str] | None, source: str) -> list[str]:
    available = list(available)
    if wanted is not None and (missing := [h for h in wanted if h not in available]):
        raise HookpointError(
            f"{source} has no SAE for hookpoint(s) {missing}. It holds SAEs for: {', '.join(available) or 'none'}. "
            "Pass some of those as `hookpoints` (`--hookpoints` on the command line), or None for all."
        )
    return available if wanted is None else list(dict.fromkeys(wanted))


# ---- Hub ------------------------------------------------------------------------------------------------------------


def _push_operations(api, repo_id, revision, directory, folders, single, model_card, card_kwargs) -> list:
    remote = set(api.list_repo_files(repo_id, revision=revision))
    remote_single = CONFIG in remote
    remote_hookpoints = _hookpoints_in(remote)
    if (single and remote_hookpoints) or (not single and remote_single):
        raise SaeNotFoundError(
            f"{repo_id} holds {'one SAE at its top' if remote_single else 'SAEs in hookpoint folders'}, and this push "
            f"is {'one SAE' if single else 'SAEs in hookpoint folders'}: the layouts would mix. Push to another repo, "
            "or push a single SAE as `push_saes_to_hub(repo, {hookpoint: sae})`."
        )
    # The SAE folders only: not the checkpoints, logs or arguments a training run leaves beside them.
    files = [p for folder in folders.values() for p in sorted(folder.rglob("*")) if p.is_file()]
    local = {p.relative_to(directory).as_posix(): p for p in files}
    # The repo's card is rendered below; one that `save_pretrained` left in a hookpoint folder is not uploaded.
    local = {path: p for path, p in local.items() if Path(path).name != README and not re.search(r"(^|/)\.", path)}
    operations: list = [CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(p)) for path, p in local.items()]
    owned = (f"{FEATURES}/",) if single else tuple(f"{h}/" for h in folders)  # files there that we no longer have go
    uploaded = {operation.path_in_repo for operation in operations}
    operations += [CommitOperationDelete(p) for p in sorted(remote - uploaded) if p.startswith(owned)]
    if model_card is None:
        kept = [h for h in remote_hookpoints if h not in folders]
        card_folders = dict(folders) | {h: _download_small_files(api, repo_id, revision, h, remote) for h in kept}
        base = card_data(directory / README)
        if not base and README in remote:
            base = card_data(Path(hf_hub_download(repo_id, README, revision=revision, token=api.token)))
        model_card = render_card(card_folders, repo_id.split("/")[-1], repo_id, base, single, **card_kwargs)
    operations.append(CommitOperationAdd(path_in_repo=README, path_or_fileobj=str(model_card).encode()))
    return operations


def _hookpoints_in(files: Iterable[str]) -> list[str]:
    return sorted({p.split("/")[0] for p in files if p.count("/") == 1 and p.endswith(f"/{CONFIG}")}, key=natural_key)


def _download_small_files(api: HfApi, repo_id: str, revision: str | None, hookpoint: str, remote: set) -> Path:
    """The config and metrics (not the weights) of an SAE that stays in the repo, for the card."""
    for name in (CONFIG, METRICS):
        if f"{hookpoint}/{name}" in remote:
            path = hf_hub_download(repo_id, f"{hookpoint}/{name}", revision=revision, token=api.token)
    return Path(path).parent


def _download(repo_id, wanted, revision, token, cache_dir, local_files_only) -> Path:
    api, offline = HfApi(token=token), local_files_only or constants.HF_HUB_OFFLINE
    with _hub_errors(repo_id, revision, api):
        resolved = api.resolve_revision(repo_id, revision=revision, cache_dir=cache_dir, local_files_only=offline)
        patterns = None if wanted is None else [f"{glob.escape(h)}/*" for h in wanted] + [CONFIG, WEIGHTS]
        if not offline:
            files = set(api.list_repo_files(repo_id, revision=resolved.resolved))
            if CONFIG not in files:
                selected = _select(_hookpoints_in(files), wanted, f"Repo {repo_id!r} at {resolved}")
                patterns = [f"{glob.escape(h)}/*" for h in selected]
        return Path(
            snapshot_download(
                repo_id,
                revision=resolved,
                allow_patterns=patterns,
                token=token,
                cache_dir=cache_dir,
                local_files_only=offline,
            )
        )


def sae_folder_to_load(source, subfolder: str | None, *, revision=None, token=None, cache_dir=None,
                       local_files_only: bool = False) -> Path:  # fmt: skip
    """For `SaeModel.from_pretrained`: the local folder of the SAE at `source` (a folder, or a Hub repo whose config
    and weights are downloaded, nothing else), checked as `load_saes` checks it (config, weights header) before any
    tensor is allocated; a missing folder or an unknown `subfolder` is refused listing the SAEs there are."""
    source, root = str(source), Path(source).expanduser()
    _refuse_missing_local_path(source)
    if root.is_dir():
        folder = root / (subfolder or "")
        if not (folder / CONFIG).is_file():
            raise _no_sae_there(f"{folder}", list(find_sae_folders(root)[0]), subfolder)
        _check_sae_folder(folder)
        return folder
    api, offline = HfApi(token=token), local_files_only or constants.HF_HUB_OFFLINE
    prefix = f"{subfolder.strip('/')}/" if subfolder else ""
    kwargs = {"revision": revision, "token": token, "cache_dir": cache_dir, "local_files_only": offline}
    with _hub_errors(source, revision, api), network_errors(f"Loading the SAE {source!r}"):
        if not offline:
            files = set(api.list_repo_files(source, revision=revision))
            if f"{prefix}{CONFIG}" not in files:
                present = ["(top)"] * (CONFIG in files) + _hookpoints_in(files)
                raise _no_sae_there(f"repo {source!r} at {prefix or 'its top'}", present, subfolder)
        folder = Path(hf_hub_download(source, CONFIG, subfolder=subfolder, **kwargs)).parent
        if offline or f"{prefix}{WEIGHTS}" in files:
            hf_hub_download(source, WEIGHTS, subfolder=subfolder, **kwargs)
    _check_sae_folder(folder)
    return folder


def _no_sae_there(where: str, present: list[str], subfolder: str | None) -> SaeNotFoundError:
    asked = f" (subfolder={subfolder!r})" if subfolder else ""
    if not present:
        return SaeNotFoundError(
            f"No {CONFIG} in {where}{asked}, and no SAE folder there: expected {CONFIG} and {WEIGHTS} as "
            "`SaeModel.save_pretrained` or `save_saes` write them."
        )
    return SaeNotFoundError(
        f"No {CONFIG} in {where}{asked}. The SAE folders there are: {', '.join(present)}; pass one of them as "
        "`subfolder=`."
    )


def _refuse_missing_local_path(source: str) -> None:
    if looks_like_local_path(source) and not Path(source).expanduser().exists():
        raise missing_path_error(source, "The SAE folder")


@contextmanager
def _hub_errors(repo_id: str, revision: str | None, api: HfApi) -> Iterator[None]:
    """The Hub client's errors for `repo_id` as `HubError`s that say what to check."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise HubError(f"{repo_id!r} is neither a local folder nor a Hub repo id ('user/name'). Check it.") from None
    try:
        yield
    except RepositoryNotFoundError as error:
        raise HubError(
            f"Repo {repo_id!r} was not found on {api.endpoint}, and it is not a local folder. It does not exist, or "
            "it is private and this token cannot read it: check the name, or pass `token=` (or log in)."
        ) from error
    except RevisionNotFoundError as error:
        try:
            refs = api.list_repo_refs(repo_id)
            known = (
                f"Branches: {', '.join(b.name for b in refs.branches)}; tags: {', '.join(t.name for t in refs.tags)}"
            )
        except (HfHubHTTPError, OSError, *TRANSPORT_ERRORS):
            known = "Its refs could not be listed"
        raise HubError(
            f"Repo {repo_id!r} has no revision {revision!r}. {known}. Pass one of those, or a sha."
        ) from error
    except (RevisionResolutionError, HfHubHTTPError, OSError) as error:
        if isinstance(error, HfSaeError):
            raise
        raise HubError(f"Could not download SAEs from {repo_id!r}: {_reason(error)}.") from error


def _reason(error: BaseException) -> str:
    """What went wrong, in one line: the Hub's own message where there is one (the client wraps upload errors)."""
    wrapper = ""
    if isinstance(error, RuntimeError) and error.__cause__ is not None:
        wrapper, error = f"{error} ".replace(" to the Hub.", ":"), error.__cause__
    if isinstance(error, HfHubHTTPError) and error.response is not None:
        request = error.response.request
        return f"{wrapper}HTTP {error.response.status_code} on {request.method} {request.url}: {error.server_message}"
    return wrapper + (str(error).strip().splitlines() or [type(error).__name__])[0]
