"""The Hub side of SAE files, with no model class: where the SAEs of a source are, downloaded if need be and checked
before any tensor is allocated; folder checks; the one-commit push; the Hub client's errors in hf_sae's words.

    locate_sae   one SAE: a local folder or a Hub (sub)folder, in any format    (`SaeModel.from_pretrained`)
    locate_saes  SAEs by hookpoint: a folder, a Hub repo or a release name       (`load_saes`)
    push_folder  SAE folders, their features and a model card, in one commit    (`push_saes_to_hub`, `push_to_hub`)

A source is resolved once (`sources.local_path`): an existing local path is read where it is; anything else is a Hub
id. Only what the asked SAEs need is downloaded.
"""

import functools
import glob
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

from huggingface_hub import CommitInfo, CommitOperationAdd, CommitOperationDelete, HfApi, constants, hf_hub_download
from huggingface_hub import snapshot_download as _snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    HFValidationError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
    RevisionResolutionError,
)
from huggingface_hub.file_download import repo_folder_name
from huggingface_hub.utils import validate_repo_id

from . import formats
from .configuration_sae import SaeConfig
from .errors import (
    ArgumentError,
    FeatureMetadataError,
    HfSaeError,
    HubError,
    SaeConfigError,
    SaeNotFoundError,
    WeightsError,
)
from .layout import (
    CONFIG,
    FEATURES,
    METRICS,
    README,
    SINGLE_SAE_KEY,
    WEIGHTS,
    find_sae_folders,
    natural_key,
    read_json,
    safetensors_shapes,
    symbolic_links,
)
from .model_card import card_data, render_card, run_arguments_file
from .sources import local_path


class Located(NamedTuple):
    """An SAE's local folder and how to read it."""

    folder: Path
    format: str  # `hf_sae` or a foreign format of `formats.FORMATS`
    hookpoint: str | None = None  # what a registry or the folder's name says, over what its files say
    hint: str | None = None  # the release or repo name, for formats whose files do not say everything
    base_model: str | None = None
    features: Callable[[], None] | None = None  # fetches a Hub SAE's feature metadata into the cache, when asked


class HubOptions(NamedTuple):
    """How to reach a Hub repo: `from_pretrained`'s and `snapshot_download`'s arguments of the same names."""

    revision: str | None = None
    token: str | bool | None = None
    cache_dir: str | None = None
    local_files_only: bool = False
    force_download: bool = False  # fetch again what the cache holds (a corrupt file)

    @property
    def offline(self) -> bool:
        return self.local_files_only or constants.HF_HUB_OFFLINE

    def download_file(self, repo_id: str, filename: str) -> Path:
        return Path(
            hf_hub_download(
                repo_id,
                filename,
                revision=self.revision,
                token=self.token,
                cache_dir=self.cache_dir,
                local_files_only=self.offline,
                force_download=self.force_download,
            )
        )

    def download(self, repo_id: str, patterns: list[str] | None) -> Path:
        return Path(
            _snapshot_download(
                repo_id,
                revision=self.revision,
                allow_patterns=patterns,
                token=self.token,
                cache_dir=self.cache_dir,
                local_files_only=self.offline,
                force_download=self.force_download,
            )
        )


# ---- the client's errors --------------------------------------------------------------------------------------------


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


@contextmanager
def hub_errors(repo_id: str, revision: str | None, token=None) -> Iterator[None]:
    """The Hub client's errors for `repo_id` as `HubError`s that say what to check."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise HubError(f"{repo_id!r} is neither a local folder nor a Hub repo id ('user/name'). Check it.") from None
    api = HfApi(token=token)
    try:
        with network_errors(f"Reading {repo_id!r}"):
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
        raise HubError(f"Repo {repo_id!r} has no revision {revision!r}. {known}. Pass one, or a sha.") from error
    except (RevisionResolutionError, HfHubHTTPError, OSError) as error:
        if isinstance(error, HfSaeError):
            raise
        raise HubError(f"Could not download SAEs from {repo_id!r}: {reason(error)}.") from error


def reason(error: BaseException) -> str:
    """What went wrong, in one line: the Hub's own message where there is one (the client wraps upload errors)."""
    wrapper = ""
    if isinstance(error, RuntimeError) and error.__cause__ is not None:
        wrapper, error = f"{error} ".replace(" to the Hub.", ":"), error.__cause__
    if isinstance(error, HfHubHTTPError) and error.response is not None:
        request = error.response.request
        return f"{wrapper}HTTP {error.response.status_code} on {request.method} {request.url}: {error.server_message}"
    return wrapper + (str(error).strip().splitlines() or [type(error).__name__])[0]


# ---- listing --------------------------------------------------------------------------------------------------------


def repo_files(repo_id: str, options: HubOptions) -> list[str]:
    """The repo's files: from the Hub, or offline those of the snapshot already in the Hub cache."""
    if not options.offline:
        return HfApi(token=options.token).list_repo_files(repo_id, revision=options.revision)
    # The cached snapshot's own files: snapshot_download offline cannot list a snapshot holding only some folders.
    folder = Path(options.cache_dir or constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model")
    ref = folder / "refs" / (options.revision or "main")
    root = folder / "snapshots" / (ref.read_text().strip() if ref.is_file() else options.revision or "main")
    if not root.is_dir():
        raise EntryNotFoundError(f"{repo_id} at {options.revision or 'main'} is not in the Hub cache.")
    return [path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file()]


def hookpoints_in(files: Iterable[str]) -> list[str]:
    """The hookpoint folders (`<hookpoint>/config.json`) among a repo's files, in natural order."""
    return sorted({p.split("/")[0] for p in files if p.count("/") == 1 and p.endswith(f"/{CONFIG}")}, key=natural_key)


def no_sae_there(where: str, present: list[str], subfolder: str | None) -> SaeNotFoundError | ArgumentError:
    asked = f" (subfolder={subfolder!r})" if subfolder else ""
    if not subfolder and present and "(top)" not in present:  # an ArgumentError: AutoModel lets it through
        return ArgumentError(
            f"No {CONFIG} in {where}: it holds several SAEs, one per folder: {', '.join(present)}. Name the one with "
            f"`subfolder=`, e.g. `SaeModel.from_pretrained(..., subfolder={present[0]!r})` or "
            f"`AutoModel.from_pretrained(..., subfolder={present[0]!r})`, or load them all with `hf_sae.load_saes`."
        )
    if not present:
        return SaeNotFoundError(
            f"No {CONFIG} in {where}{asked}, and no SAE folder there: expected {CONFIG} and {WEIGHTS} as "
            "`SaeModel.save_pretrained` or `save_saes` write them."
        )
    return SaeNotFoundError(
        f"No {CONFIG} in {where}{asked}. The SAE folders there are: {', '.join(present)}; pass one of them as "
        "`subfolder=`."
    )


# ---- checks ---------------------------------------------------------------------------------------------------------


def check_sae_folder(folder: Path, hookpoint: str | None = None) -> SaeConfig:
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
    expected, saved = config.tensor_shapes(), safetensors_shapes(folder / WEIGHTS)
    if missing := sorted(set(expected) - set(saved)):
        raise WeightsError(f"{folder / WEIGHTS} lacks {missing}, which a {config.architecture!r} SAE needs.")
    if wrong := [(n, saved[n], expected[n]) for n in sorted(expected) if saved[n] != expected[n]]:
        raise wrong_shapes_error(folder / WEIGHTS, config, wrong)
    return config


def wrong_shapes_error(path, config: SaeConfig, wrong: list[tuple[str, tuple, tuple]]) -> WeightsError:
    """Weights whose shapes (`(name, saved, expected)`) disagree with their config."""
    shapes = "; ".join(f"weight `{name}` in the file has shape {tuple(saved)} where its config expects "
                       f"{tuple(expected)}" for name, saved, expected in wrong)  # fmt: skip
    return WeightsError(
        f"{path} disagrees with its config (d_in={config.d_in}, num_latents={config.num_latents}): {shapes}. The "
        "weights file and config.json do not belong together: re-save the SAE or fix config.json."
    )


# ---- one SAE --------------------------------------------------------------------------------------------------------


def locate_sae(source, subfolder: str | None, options: HubOptions) -> Located:
    """The local folder of the SAE at `source` (a folder or a Hub repo) and `subfolder`, in any format: from the Hub
    an hf_sae SAE's config and weights are downloaded, nothing else, and checked before any tensor is allocated."""
    root = local_path(source, "The SAE folder", SaeNotFoundError)
    if root is not None:
        folder = root / (subfolder or "")
        fmt = formats.detect_format(folder)
        if fmt is None and (folder / CONFIG).is_file():
            check_sae_folder(folder)  # says what is wrong with its config.json
        if fmt is None:
            raise no_sae_there(f"{folder}", list(find_sae_folders(root)[0]), subfolder)
        if fmt == "hf_sae":
            check_sae_folder(folder)
        return Located(folder, fmt)
    repo_id, prefix = str(source), f"{subfolder.strip('/')}/" if subfolder else ""
    with hub_errors(repo_id, options.revision, options.token):
        files = _files_or_none(repo_id, options)
        here = {f.removeprefix(prefix) for f in files or [] if f.startswith(prefix)}
        if CONFIG not in here and (fmt := formats.format_of(here)):
            return Located(options.download(repo_id, [f"{glob.escape(prefix)}*"]) / prefix, fmt, hint=repo_id)
        if CONFIG not in here and not options.offline:  # offline, the cache may hold only part of the repo
            present = ["(top)"] * (CONFIG in files) + hookpoints_in(files)
            raise no_sae_there(f"repo {repo_id!r} at {prefix or 'its top'}", present, subfolder)
        for name in [CONFIG, *[WEIGHTS] * (WEIGHTS in here or options.offline)]:  # the two files, nothing else
            folder = Path(options.download_file(repo_id, prefix + name)).parent
    if not formats.is_hf_sae_config(folder / CONFIG):
        raise no_sae_there(f"repo {repo_id!r} at {prefix or 'its top'}", [], subfolder)
    check_sae_folder(folder)
    return Located(folder, "hf_sae", features=functools.partial(download_features, repo_id, subfolder, options))


def download_features(repo_id: str, subfolder: str | None, options: HubOptions) -> None:
    """Fetch the feature metadata of the SAE at `subfolder` of a Hub repo (`<subfolder>/features/`) into the cache,
    beside the config and weights `locate_sae` fetched; refused, naming the repo, where it has none."""
    prefix = f"{subfolder.strip('/')}/" if subfolder else ""
    with hub_errors(repo_id, options.revision, options.token):
        folder = options.download(repo_id, [f"{glob.escape(prefix)}{FEATURES}/*"]) / prefix / FEATURES
    if not folder.is_dir():
        raise FeatureMetadataError(
            f"{'The Hub cache of ' * options.offline}repo {repo_id!r} holds no feature metadata for the SAE at "
            f"{prefix or 'its top'} (no {prefix}{FEATURES}/). Collect it with `hf-sae features`, then `hf-sae push`."
        )


def _files_or_none(repo_id: str, options: HubOptions) -> list[str] | None:
    """The repo's files; offline, None where the cache cannot list them (the download then says what is missing)."""
    try:
        return repo_files(repo_id, options)
    except EntryNotFoundError:
        if options.offline:
            return None
        raise


# ---- many SAEs ------------------------------------------------------------------------------------------------------


def locate_saes(source, wanted: list[str] | None, options: HubOptions, width=None, l0=None) -> dict[str, Located]:
    """`{hookpoint: Located}` for the SAEs at `source` (a folder, a Hub repo or a release name of the registry),
    narrowed to `wanted` hookpoints (and `width`, `l0` where a repo has several per hookpoint)."""
    entry = formats.releases().get(str(source))
    root = None if entry else local_path(source, "The SAE folder", SaeNotFoundError)
    if root is not None:
        if options.revision is not None:
            raise ArgumentError(f"`revision` applies to Hub repos, but {root} is a local folder. Drop `revision`.")
        return _locate_local(root, wanted, width, l0, str(source))
    repo_id = entry["repo_id"] if entry else str(source)
    where = f"{source} ({repo_id})" if entry else repo_id
    with hub_errors(repo_id, options.revision, options.token):
        files = _files_or_none(repo_id, options)
        foreign = formats.sae_folders(files or [])
        if entry is None and not foreign:
            return _locate_hf_sae_repo(repo_id, files, wanted, options)
        if not foreign:
            raise SaeNotFoundError(f"Release {source!r} ({repo_id}) holds no {entry['format']} SAE folder.")
        if entry is not None:
            candidates = [formats.Candidate(f, m) for f in foreign if (m := formats.match_release(entry, f))]
        else:  # the small files say where each SAE reads
            small = [f"{f}/{name}" for f in foreign for name in ("cfg.json", CONFIG, "hyperparams.json")]
            small += [CONFIG] * ("sparsify" in foreign.values())  # a sparsify run's config names its base model
            candidates = _describe(options.download(repo_id, small), foreign, repo_id)
        chosen = formats.choose(candidates, wanted, width, l0, where)
        root = options.download(repo_id, [f"{glob.escape(c.folder)}/*" for c in chosen.values()] + [CONFIG])
    base_model = entry.get("base_model") if entry else None
    return {h: Located(root / c.folder, c.found.format, h, repo_id, base_model) for h, c in chosen.items()}


def _locate_local(root: Path, wanted, width, l0, source: str) -> dict[str, Located]:
    fmt = formats.detect_format(root)
    if fmt not in (None, "hf_sae"):  # one SAE in another format
        found = formats.describe(root, fmt, source)
        chosen = formats.choose([formats.Candidate(SINGLE_SAE_KEY, found)], wanted, width, l0, source)
        return {h: Located(root, fmt, found.hookpoint, source) for h in chosen}
    folders, single = find_sae_folders(root)
    foreign = formats.sae_folders(formats.files_in(root))
    if foreign and not any(formats.detect_format(folder) == "hf_sae" for folder in folders.values()):
        chosen = formats.choose(_describe(root, foreign, source), wanted, width, l0, source)
        return {h: Located(root / c.folder, c.found.format, h, source) for h, c in chosen.items()}
    if not folders:
        raise SaeNotFoundError(
            f"Found no SAE in {source}: expected <hookpoint>/{CONFIG} folders or a {CONFIG} at the top, or SAEs in "
            f"one of the formats {', '.join(formats.FORMATS)}."
        )
    candidates = [formats.Candidate(h, formats.Found("hf_sae", h, None)) for h in folders]
    chosen = formats.choose(candidates, wanted, None, None, source)
    for hookpoint in chosen:
        check_sae_folder(folders[hookpoint], None if single else hookpoint)
    return {h: Located(folders[h], "hf_sae") for h in chosen}


def _describe(root: Path, foreign: Mapping[str, str], hint: str) -> list[formats.Candidate]:
    return [formats.Candidate(f, formats.describe(root / f, fmt, hint)) for f, fmt in foreign.items()]


def _locate_hf_sae_repo(repo_id: str, files, wanted, options: HubOptions) -> dict[str, Located]:
    if not options.offline and CONFIG not in files:  # offline, the cache may hold only part of the repo
        candidates = [formats.Candidate(h, formats.Found("hf_sae", h, None)) for h in hookpoints_in(files)]
        chosen = list(formats.choose(candidates, wanted, None, None, f"Repo {repo_id!r}"))
        patterns = [f"{glob.escape(h)}/*" for h in chosen]
    else:  # a single SAE at the top, or offline
        patterns = None if wanted is None else [f"{glob.escape(h)}/*" for h in wanted] + [CONFIG, WEIGHTS]
    folders, single = find_sae_folders(options.download(repo_id, patterns))
    if not folders:
        raise SaeNotFoundError(
            f"Found no SAE in {repo_id}: expected <hookpoint>/{CONFIG} folders or a {CONFIG} at the top."
        )
    chosen = formats.choose([formats.Candidate(h, formats.Found("hf_sae", h, None)) for h in folders], wanted,
                            None, None, f"Repo {repo_id!r}")  # fmt: skip
    for hookpoint in chosen:
        check_sae_folder(folders[hookpoint], None if single else hookpoint)
    return {h: Located(folders[h], "hf_sae") for h in chosen}


# ---- pushing --------------------------------------------------------------------------------------------------------


def push_folder(
    repo_id: str,
    directory: Path,
    *,
    private: bool = False,
    token: str | bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    commit_description: str | None = None,
    create_pr: bool = False,
    model_card=None,
    **card_kwargs,
) -> CommitInfo:
    """Push the SAE folders in `directory` (as `save_saes` or `save_pretrained` write them), their features and
    metrics, and a model card, in one commit; each folder is checked before anything is uploaded."""
    folders, single = find_sae_folders(directory) if directory.is_dir() else ({}, False)
    if not folders:
        raise SaeNotFoundError(
            f"Found no SAE in {directory}: expected {directory}/<hookpoint>/{CONFIG} (from `save_saes`) or "
            f"{directory}/{CONFIG} (from `SaeModel.save_pretrained`)."
        )
    for hookpoint, folder in folders.items():
        check_sae_folder(folder, None if single else hookpoint)
    if links := symbolic_links(directory.iterdir() if single else [*folders.values(), directory / README]):
        raise HubError(
            f"Pushing {directory} refused, nothing was uploaded: it holds symbolic links "
            f"({', '.join(map(str, links))}), which could point to any file on this machine (a token, a key). Replace "
            "each with a copy of the file it should hold, or remove it."
        )
    api = HfApi(token=token)
    intact = (f"A Hub commit is all or nothing, so the repo holds no part of this push (the SAEs for "
              f"{', '.join(folders)}). Fix the cause (token, network, repo name) and push again.")  # fmt: skip
    with push_errors(f"Pushing to {repo_id!r}{f' (branch {revision})' * bool(revision)}", intact):
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        if revision is not None and not revision.startswith("refs/pr/"):
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        operations = _push_operations(api, repo_id, revision, directory, folders, single, model_card, card_kwargs)
        message = commit_message or f"Upload {len(folders)} SAE{'s' * (len(folders) > 1)} with hf_sae"
        with warnings.catch_warnings():  # feature tables are parquet files in a model repo on purpose
            warnings.filterwarnings("ignore", message=".*commit a data file.*", category=UserWarning)
            return api.create_commit(repo_id, operations, commit_message=message,
                                     commit_description=commit_description, revision=revision,
                                     create_pr=create_pr)  # fmt: skip


@contextmanager
def push_errors(action: str, intact: str) -> Iterator[None]:
    """A failed push (the endpoint out of reach, an HTTP error, a refused upload) as one `HubError` that says what
    failed (`action`), why, and what is intact and what to do (`intact`)."""
    try:
        with network_errors(action):
            yield
    except (HfHubHTTPError, OSError, RuntimeError) as error:  # the client wraps a failed LFS upload in RuntimeError
        if isinstance(error, HfSaeError):
            raise
        raise HubError(f"{action} failed: {reason(error)}. {intact}") from error


def _push_operations(api, repo_id, revision, directory, folders, single, model_card, card_kwargs) -> list:
    remote = set(api.list_repo_files(repo_id, revision=revision))
    remote_single, remote_hookpoints = CONFIG in remote, hookpoints_in(remote)
    if (single and remote_hookpoints) or (not single and remote_single):
        raise SaeNotFoundError(
            f"{repo_id} holds {'one SAE at its top' if remote_single else 'SAEs in hookpoint folders'}, and this push "
            f"is {'one SAE' if single else 'SAEs in hookpoint folders'}: the layouts would mix. Push to another repo, "
            "or push a single SAE as `push_saes_to_hub(repo, {hookpoint: sae})`."
        )
    # The SAE folders (less a card `save_pretrained` left: the repo's is rendered below) and the run's arguments; not
    # the checkpoints or logs a training run leaves beside them.
    files = [p for folder in folders.values() for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()]
    local = {p.relative_to(directory).as_posix(): p for p in files}
    local = {path: p for path, p in local.items() if Path(path).name != README and not re.search(r"(^|/)\.", path)}
    local |= {p.name: p for p in [run_arguments_file(directory)] if p and p.name not in local}
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


def _download_small_files(api: HfApi, repo_id: str, revision: str | None, hookpoint: str, remote: set) -> Path:
    """The config and metrics (not the weights) of an SAE that stays in the repo, for the card."""
    for name in (CONFIG, METRICS):
        if f"{hookpoint}/{name}" in remote:
            path = hf_hub_download(repo_id, f"{hookpoint}/{name}", revision=revision, token=api.token)
    return Path(path).parent
