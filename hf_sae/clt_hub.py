"""A cross-layer transcoder on the Hub: a folder holding a saved `CltModel` (config.json, model.safetensors, and any
feature metadata and metrics beside them) pushed whole, in one commit, with a model card that says what it is. It loads
back with `CltModel.from_pretrained` or `hf_sae.load_transcoders`.
"""

from pathlib import Path

from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi

from .configuration_clt import CltConfig
from .errors import HubError, WeightsError
from .hub_client import push_errors
from .layout import CONFIG, FEATURES, METRICS, README, WEIGHTS, read_json, safetensors_shapes, symbolic_links
from .model_card import card_data, render_clt_card

PUSHED = (CONFIG, WEIGHTS, METRICS, FEATURES)  # what a CLT's repo holds besides its card


def holds_clt(folder: Path) -> bool:
    """Whether `folder` holds a saved `CltModel` (config.json of model_type `hf_sae_clt` at its top)."""
    return (folder / CONFIG).is_file() and read_json(folder / CONFIG).get("model_type") == CltConfig.model_type


def push_clt_folder(repo_id: str, directory: Path, *, private: bool = False, token: str | bool | None = None,
                    revision: str | None = None, commit_message: str | None = None,
                    commit_description: str | None = None, create_pr: bool = False, model_card=None,
                    **card_kwargs) -> CommitInfo:  # fmt: skip
    """Push a folder holding a `CltModel` (its config, weights, and any feature metadata and metrics beside them, not
    the checkpoints or arguments a training run leaves there) with a model card that says it is a cross-layer
    transcoder, in one commit, checked before anything is uploaded."""
    config = CltConfig.from_pretrained(directory)
    saved, expected = safetensors_shapes(directory / WEIGHTS), config.tensor_shapes()
    if wrong := sorted(name for name in expected if saved.get(name) != expected[name]):
        raise WeightsError(
            f"{directory / WEIGHTS} disagrees with its config.json on {wrong} (the config expects "
            f"{[expected[name] for name in wrong]}). Save the cross-layer transcoder again."
        )
    tops = [directory / name for name in PUSHED if (directory / name).exists()]
    if links := symbolic_links(tops):
        raise HubError(
            f"Pushing {directory} refused, nothing was uploaded: it holds symbolic links "
            f"({', '.join(map(str, links))}), which could point to any file on this machine. Replace each with a copy "
            "of the file, or remove it."
        )
    paths = [path for top in tops for path in ([top] if top.is_file() else sorted(top.rglob("*"))) if path.is_file()]
    files = {path.relative_to(directory).as_posix(): path for path in paths}
    card = model_card or render_clt_card(directory, repo_id, card_data(directory / README), **card_kwargs)
    api = HfApi(token=token)
    intact = "A Hub commit is all or nothing, so the repo holds no part of this push. Fix the cause and push again."
    with push_errors(f"Pushing the cross-layer transcoder to {repo_id!r}", intact):
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        if revision is not None and not revision.startswith("refs/pr/"):
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        operations = [CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(p)) for path, p in files.items()]
        operations.append(CommitOperationAdd(path_in_repo=README, path_or_fileobj=str(card).encode()))
        return api.create_commit(repo_id, operations, commit_message=commit_message or "Upload a cross-layer "
                                 "transcoder with hf_sae", commit_description=commit_description, revision=revision,
                                 create_pr=create_pr)  # fmt: skip
