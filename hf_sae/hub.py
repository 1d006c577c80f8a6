"""Several SAEs at once, with their feature metadata, metrics and a model card: saved to a folder, pushed in one Hub
commit, loaded by hookpoint from a folder, a Hub repo or a release name, in any format.

The layout (`layout`) is the same on disk and on the Hub, and `save_saes` is its one writer: a training run saves
through it too. A single SAE (config.json at the top, from `SaeModel.save_pretrained` or `push_to_hub`) loads the
same way. Where the files are and which to download is `hub_client`'s; building each SAE is `SaeModel`'s.

Transcoders for attribution (`load_transcoders`) come from the same places: hf_sae's per-layer transcoders (one folder
per `model.layers.{l}.mlp.input`), a saved `CltModel`, or circuit-tracer's `transcoder_set` and
`cross_layer_transcoder` folders. A folder holding a `CltModel` is pushed whole (`clt_hub`).
"""

import glob
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import CommitInfo, ModelCard
from safetensors import SafetensorError

from .clt_hub import holds_clt, push_clt_folder
from .configuration_clt import CltConfig
from .configuration_sae import SaeConfig
from .errors import (
    ArgumentError,
    FileFormatError,
    HfSaeError,
    HookpointError,
    SaeConfigError,
    SaeNotFoundError,
    WriteError,
)
from .formats.circuit_tracer import CONFIG_YAML, read_cross_layer_transcoder, read_kind, read_transcoder_set
from .hookpoints import INPUT_SUFFIX
from .hub_client import (
    HubOptions,
    check_sae_folder,
    hub_errors,
    locate_saes,
    network_errors,
    push_folder,
    repo_files,
)
from .layout import (
    CONFIG,
    FEATURES,
    METRICS,
    README,
    find_sae_folders,
    hookpoint_folder,
    read_json,
    refuse_if_no_space,
    write_failure,
    write_json,
    write_text,
)
from .model_card import CARD_ARGUMENTS, card_data, copy_run_files, render_card
from .modeling_clt import CltModel
from .modeling_sae import SaeModel, SaesLike, refuse_non_finite, saes_by_hookpoint
from .precision import as_torch_dtype
from .release_saes import by_sae_ids, read_release_saes
from .sources import local_path

# hf_sae's name of the MLP input of layer l, which a per-layer transcoder of that layer reads
LAYER_MLP_INPUT = re.compile(rf"model\.layers\.(\d+)\.mlp{re.escape(INPUT_SUFFIX)}")
CROSS_LAYER_KINDS = ("clt", "cross_layer_transcoder")  # hf_sae's saved CltModel, circuit-tracer's folder


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
    saes, output_dir = _named_folders(saes), Path(output_dir)
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
    if unknown := set(card_and_save_kwargs) - set(CARD_ARGUMENTS):
        raise TypeError(f"{sorted(unknown)} apply when pushing SAEs, not a folder: save them with `save_saes` first.")
    push = push_clt_folder if holds_clt(Path(saes_or_dir)) else push_folder
    return push(repo_id, Path(saes_or_dir), private=private, token=token, revision=revision,
                       commit_message=commit_message, commit_description=commit_description, create_pr=create_pr,
                       model_card=model_card, **card_and_save_kwargs)  # fmt: skip


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
    other formats (SAELens, sparsify, dictionary_learning, Gemma Scope 1 and 2, Llama Scope) are detected and
    converted, and a release name of `hf_sae.convert.releases()` (`gemma-scope-2b-pt-res`, any release id of SAELens'
    registry) stands for its repo, and takes SAELens' SAE ids as `hookpoints` too.

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

    wanted = [hookpoints] if isinstance(hookpoints, str) else hookpoints
    wanted = list(wanted) if isinstance(wanted, Iterable) else wanted
    if wanted is not None and (not isinstance(wanted, list) or not all(isinstance(h, str) for h in wanted)):
        raise ArgumentError(
            f"`hookpoints` must be a hookpoint name, a list of them or None (all); got {hookpoints!r}, e.g. "
            "`hookpoints=['model.layers.6']`."
        )
    options = HubOptions(revision, token, cache_dir, local_files_only)
    dtype = as_torch_dtype(dtype)
    with network_errors(f"Loading SAEs from {str(repo_or_dir)!r}"):
        if (read := read_release_saes(str(repo_or_dir), wanted, options, width, l0)) is not None:
            return {h: _sae_from(*sae).to(device=device, dtype=dtype) for h, sae in read.items()}
        wanted, width, l0 = by_sae_ids(str(repo_or_dir), wanted, width, l0)  # SAELens' SAE ids of a release
        try:
            located = locate_saes(repo_or_dir, wanted, options, width=width, l0=l0)
        except (SaeNotFoundError, SaeConfigError, HookpointError):  # none of hf_sae's: maybe circuit-tracer's
            if (saes := _saes_of_circuit_tracer(repo_or_dir, wanted, options)) is None:
                raise
            return {h: sae.to(device=device, dtype=dtype) for h, sae in saes.items()}
    return {h: SaeModel.from_located(where).to(device=device, dtype=dtype) for h, where in located.items()}


def load_transcoders(
    source: str | os.PathLike,
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
) -> dict[int, SaeModel] | CltModel:
    r"""
    Load the transcoders that replace a model's MLPs for attribution, from a local folder or a Hub repo.

    `source` holds hf_sae's per-layer transcoders (one folder per `model.layers.{l}.mlp.input` hookpoint, as
    `hf-sae train --transcode` saves them), a saved [`CltModel`], or a circuit-tracer folder (`config.yaml` with
    `model_kind: transcoder_set` or `cross_layer_transcoder`, as `hf-sae convert --to circuit_tracer` writes it).

    Args:
        source (`str` or `os.PathLike`): a local folder, or a Hub repo id.
        revision, token, cache_dir, local_files_only: as for [`load_saes`].
        device, dtype: where and in which dtype to put the transcoders.

    Returns:
        `dict[int, SaeModel]` (per-layer transcoders by layer) or a `CltModel`, as `hf_sae.attribute` takes them.

    Example:

    ```python
    >>> transcoders = load_transcoders("me/smollm2-transcoders")
    >>> graph = attribute(lm, tokenizer, transcoders, "The capital of France is")
    ```
    """
    options = HubOptions(revision, token, cache_dir, local_files_only)
    with network_errors(f"Loading transcoders from {str(source)!r}"):
        kind, where = _transcoders_at(source, options)
    dtype = as_torch_dtype(dtype)
    if kind == "saes":
        try:
            saes = load_saes(source, revision=revision, token=token, device=device, dtype=dtype, cache_dir=cache_dir,
                             local_files_only=local_files_only)  # fmt: skip
        except SaeNotFoundError as error:
            raise SaeNotFoundError(
                f"{error} Transcoders may also be a saved CltModel (config.json of model_type "
                f"{CltConfig.model_type!r}) or a circuit-tracer folder ({CONFIG_YAML} beside layer_0.safetensors or "
                "W_enc_0.safetensors)."
            ) from None
        return transcoders_by_layer(saes, str(source))
    if kind == "transcoder_set":
        return {layer: _sae_from(config, tensors, where).to(device=device, dtype=dtype)
                for layer, (config, tensors) in read_transcoder_set(where).items()}  # fmt: skip
    if kind == "clt":
        clt = CltModel.from_pretrained(where, revision=revision, token=token, cache_dir=cache_dir,
                                       local_files_only=local_files_only)  # fmt: skip
    else:
        clt = CltModel.from_tensors(*read_cross_layer_transcoder(where), name_or_path=str(where))
    return clt.to(device=device, dtype=dtype)


def transcoders_by_layer(saes: Mapping[str, SaeModel], source: str) -> dict[int, SaeModel]:
    """Per-layer transcoders keyed by the layer whose MLP input each reads (`model.layers.{l}.mlp.input`)."""
    by_layer, others = {}, []
    for hookpoint, sae in saes.items():
        match = LAYER_MLP_INPUT.fullmatch(sae.config.hookpoint or hookpoint)
        if match is None or not sae.config.is_transcoder:
            others.append(sae.config.hookpoint or hookpoint)
        else:
            by_layer[int(match[1])] = sae
    if others or not by_layer:
        raise SaeConfigError(
            f"{source} holds SAEs that are not MLP transcoders ({others or 'none at all'}): attribution needs one "
            "transcoder per layer reading `model.layers.{l}.mlp.input` and predicting `model.layers.{l}.mlp` (train "
            "them with `hf-sae train --transcode`), a cross-layer transcoder, or a circuit-tracer folder."
        )
    return dict(sorted(by_layer.items()))


def _transcoders_at(source, options: HubOptions) -> tuple[str, Path | str]:
    """`(kind, where)`: `clt` (a saved `CltModel`), circuit-tracer's `transcoder_set` or `cross_layer_transcoder` (a
    local folder, downloaded whole from the Hub), or `saes` (per-layer SAE folders, which `load_saes` reads)."""
    root = local_path(source, "The transcoders folder", SaeNotFoundError)
    if root is not None:
        if not root.is_dir():
            raise SaeNotFoundError(f"The transcoders must be a folder or a Hub repo id; {root} is a file.")
        if (root / CONFIG).is_file() and read_json(root / CONFIG).get("model_type") == CltConfig.model_type:
            return "clt", root
        return (read_kind(root), root) if (root / CONFIG_YAML).is_file() else ("saes", root)
    repo_id = str(source)
    with hub_errors(repo_id, options.revision, options.token):
        top = {name for name in repo_files(repo_id, options) if "/" not in name}
        if CONFIG_YAML in top:  # circuit-tracer's folder: config.yaml and the weights beside it
            wanted = [glob.escape(name) for name in top if name == CONFIG_YAML or name.endswith(".safetensors")]
            root = options.download(repo_id, wanted)
            return read_kind(root), root
        if (
            CONFIG in top
            and read_json(options.download_file(repo_id, CONFIG)).get("model_type") == CltConfig.model_type
        ):
            return "clt", repo_id
    return "saes", repo_id


def _saes_of_circuit_tracer(source, wanted: list[str] | None, options: HubOptions) -> dict[str, SaeModel] | None:
    """The per-layer transcoders of a circuit-tracer `transcoder_set` at `source`, by hookpoint; None where `source`
    is no transcoder folder. A cross-layer transcoder is refused: it is one model over every layer."""
    try:
        kind, where = _transcoders_at(source, options)
    except FileFormatError:
        raise  # a circuit-tracer folder, damaged: its own reason, not "no SAE"
    except HfSaeError:
        return None  # the error about SAEs stands
    if kind in CROSS_LAYER_KINDS:
        raise SaeNotFoundError(
            f"{source} holds a cross-layer transcoder, one model over every layer rather than SAEs by hookpoint. Load "
            f"it with `hf_sae.load_transcoders({str(source)!r})` (or `CltModel.from_pretrained`)."
        )
    if kind != "transcoder_set":
        return None
    saes = {
        config.hookpoint: _sae_from(config, tensors, where) for config, tensors in read_transcoder_set(where).values()
    }
    if wanted is not None and (missing := [h for h in wanted if h not in saes]):
        raise SaeNotFoundError(
            f"{source} has no transcoder for hookpoint(s) {missing}. It has: {', '.join(saes)}. Pass some of those."
        )
    return {h: saes[h] for h in wanted} if wanted is not None else saes


def _sae_from(config: SaeConfig, tensors: dict[str, torch.Tensor], folder: Path) -> SaeModel:
    """An SAE holding exactly `tensors` (as a format reader returns them); no initialisation runs."""
    refuse_non_finite(tensors, folder)
    with torch.device("meta"):
        sae = SaeModel(config)
    sae.load_state_dict({k: v.contiguous() for k, v in tensors.items()}, strict=True, assign=True)
    sae.config._name_or_path = sae.name_or_path = str(folder)
    return sae.eval()


# ---- saving ---------------------------------------------------------------------------------------------------------


def _named_folders(saes: SaesLike) -> dict[str, SaeModel]:
    """SAEs by hookpoint, each hookpoint a folder name that its SAE's config agrees with."""
    result = saes_by_hookpoint(saes, "save_saes")
    if not result:
        raise SaeNotFoundError("No SAEs given: pass a dict `{hookpoint: sae}` or a list of SAEs.")
    for hookpoint, sae in result.items():
        hookpoint_folder(hookpoint)
        if sae.config.hookpoint not in (None, hookpoint):
            raise SaeConfigError(
                f"The SAE given for {hookpoint!r} was trained on {sae.config.hookpoint!r} (its `config.hookpoint`). "
                "Use that key, or build the config with the right hookpoint."
            )
    return result


def _stage_sae(folder: Path, sae: SaeModel, hookpoint: str, features: Any, metrics: Mapping | None) -> None:
    sae.save_pretrained(folder, model_card=False)  # the card of the whole repo goes at its top
    if sae.config.hookpoint is None:  # the folder names the hookpoint; let the config say it too
        config = json.loads((folder / CONFIG).read_text())
        (folder / CONFIG).write_text(json.dumps(config | {"hookpoint": hookpoint}, indent=2, sort_keys=True) + "\n")
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
    copy_run_files(sae.name_or_path, folder)  # an SAE loaded from a folder keeps its metrics, features and arguments
    check_sae_folder(folder, hookpoint)


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
