"""What hf_sae writes to disk and how: file names, the metrics schema, finding SAE folders, and atomic writes.

```
<dir>/README.md                       model card
<dir>/<hookpoint>/config.json         SaeConfig
<dir>/<hookpoint>/model.safetensors   the weights
<dir>/<hookpoint>/metrics.json        the SAE's metrics (keys below)
<dir>/<hookpoint>/features/...        feature metadata, optional
```

A single SAE (config.json at the top, from `SaeModel.save_pretrained`) is read the same way. Every file is written
under a temporary name and renamed, so a reader, or a run killed half-way, never sees half a file.
"""

import fcntl
import fnmatch
import json
import os
import re
import shutil
import socket
import struct
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from .errors import ArgumentError, FileFormatError, HookpointError, WeightsError, WriteError

CONFIG, WEIGHTS, FEATURES, README = "config.json", "model.safetensors", "features", "README.md"
METRICS, TRAINING_ARGS, EVAL_REPORT = "metrics.json", "training_args.json", "eval_results.json"
SINGLE_SAE_KEY = "sae"  # the key of a single SAE whose config names no hookpoint

# ---- the metrics schema ---------------------------------------------------------------------------------------------

TRAIN_TOKENS = "train_tokens"
# How good the SAE is: what goes into a model card's model-index (definitions in `evaluation`).
QUALITY_KEYS = (
    "fvu",
    "explained_variance",
    "mse",
    "cosine_similarity",
    "norm_ratio",
    "l0",
    "dead_fraction",
    "dense_fraction",
    "loss_recovered",
    "loss_recovered_mean_ablation",
    "kl_div",
    "ce_loss_clean",
    "ce_loss_spliced",
    "ce_loss_zero_ablated",
    "ce_loss_mean_ablated",
    "clear_pattern_share",  # from `hf-sae features` (hf_sae.interpretability), not from evaluation
)
# What the run was: recorded beside the quality numbers, never a model-index metric.
RUN_KEYS = (
    "architecture",
    "num_latents",
    "k",
    "learning_rate",
    TRAIN_TOKENS,
    "train_epochs",
    "train_seconds",
    "train_dead_fraction",
    "train_never_fired_fraction",
    "eval_tokens",
    "eval_split",
    "datasets",
    "dataset_weights",
)
# `per_source`: {source: these metrics over that source's tokens}, beside the pooled ones of the same names.
PER_SOURCE = "per_source"
SOURCE_KEYS = (
    "fvu",
    "explained_variance",
    "l0",
    "loss_recovered",
    "kl_div",
    "ce_loss_clean",
    "ce_loss_spliced",
    "ce_loss_zero_ablated",
    "eval_tokens",
)


def sae_metrics(report: dict) -> dict:
    """The part of a report that belongs in an SAE's metrics.json: quality, run and per-source keys, nothing bulky."""
    return {key: report[key] for key in (*RUN_KEYS, *QUALITY_KEYS, PER_SOURCE) if key in report}


def add_metrics(sae_folder: Path, report: dict) -> None:
    """`report`'s metrics into the SAE's metrics.json, beside (and over) what it holds already."""
    path = Path(sae_folder) / METRICS
    write_json(path, (read_json(path) if path.is_file() else {}) | sae_metrics(report))


# ---- names that become paths ----------------------------------------------------------------------------------------

# One name inside the folder the user named: no separator, no leading dot (`..`, hidden staging), no NUL.
_FOLDER_NAME = re.compile(r"[^/\\.\x00][^/\\\x00]*")


def folder_name(name, what: str, fix: str, *, reserved: tuple[str, ...] = (), error=ArgumentError) -> str:
    """`name`, checked before anything is written: every name hf_sae turns into a path (a hookpoint from any format,
    a sweep name, a Hub or release folder) goes through here, so that none can point outside the folder the user
    named or take the place of a file hf_sae writes there (`reserved`: names and glob patterns, any case)."""
    if not isinstance(name, str) or not _FOLDER_NAME.fullmatch(name) or len(name.encode()) > 255:
        raise error(
            f"{what} {name!r} must be a folder name: one name of at most 255 bytes, without '/' or '\\', not "
            f"starting with '.', so that nothing is written outside the folder it belongs in. {fix}"
        )
    if clash := next((pattern for pattern in reserved if fnmatch.fnmatch(name.lower(), pattern.lower())), None):
        raise error(f"{what} {name!r} clashes with {clash!r}, which hf_sae writes in the same folder. {fix}")
    return name


def hookpoint_folder(hookpoint, what: str = "Hookpoint") -> str:
    """A hookpoint that names a folder (in a repo of SAEs, a sweep or a conversion): a module path, nothing else."""
    fix = "A hookpoint is a module path as `named_modules()` spells it, such as 'model.layers.6'."
    return folder_name(hookpoint, what, fix, reserved=(README,), error=HookpointError)


def symbolic_links(paths: Iterable[Path]) -> list[Path]:
    """The symbolic links among `paths` and under them (not followed): what a link points to can be any file on the
    machine, a token or a key, so nothing that leaves the machine goes through one."""
    tops = [Path(top) for top in paths]
    return [p for top in tops for p in ([top] if top.is_symlink() else top.rglob("*")) if p.is_symlink()]


# ---- finding SAEs ---------------------------------------------------------------------------------------------------


def natural_key(name: str) -> list:
    """Sort key that puts `model.layers.2` before `model.layers.10`."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def find_sae_folders(root: Path) -> tuple[dict[str, Path], bool]:
    """`({hookpoint: folder}, single)`, in natural order: the top folder if it holds config.json, else each
    hookpoint subfolder that does (a run's checkpoints and logs have none; hidden folders are staging)."""
    root = Path(root)
    if (root / CONFIG).is_file():
        return {read_json(root / CONFIG).get("hookpoint") or SINGLE_SAE_KEY: root}, True
    found = [p.parent.name for p in root.glob(f"*/{CONFIG}") if not p.parent.name.startswith(".")]
    return {h: root / h for h in sorted(found, key=natural_key)}, False


def read_json(path: Path) -> dict:
    """A JSON object from `path`, or a clear error naming the file."""
    try:
        data = json.loads(Path(path).read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise FileFormatError(f"{path} is not valid JSON ({error}). Fix it, or save the SAE again.") from None
    if not isinstance(data, dict):
        raise FileFormatError(f"{path} should hold a JSON object, got {type(data).__name__}.")
    return data


def safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes from a safetensors header, after checking that the file is whole."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as file:
            (header_size,) = struct.unpack("<Q", file.read(8))
            if header_size > size - 8:
                raise ValueError(f"its header claims {header_size} bytes but the file has {size}")
            header = json.loads(file.read(header_size))
        header.pop("__metadata__", None)
        end = 8 + header_size + max((entry["data_offsets"][1] for entry in header.values()), default=0)
        if end != size:
            raise ValueError(f"its tensors need {end} bytes but the file has {size} (truncated?)")
        return {name: tuple(entry["shape"]) for name, entry in header.items()}
    except (ValueError, KeyError, TypeError, AttributeError, struct.error) as error:
        raise WeightsError(
            f"{path} is not a valid safetensors file: {error}. It is corrupt or incomplete: download it again "
            "(`force_download=True`) or save the SAE again."
        ) from None


# ---- atomic writes --------------------------------------------------------------------------------------------------


def probe_writable(folder: Path, flag: str) -> None:
    """Refuse a folder that cannot take results before the work that would produce them: create it (and its
    parents), write and remove a file there, then remove what this created, so that a refused run leaves nothing."""
    folder = Path(folder).expanduser().absolute()
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".hf_sae-write-test-{os.getpid()}"
        probe.write_bytes(b"probe")
        probe.unlink()
    except OSError as error:
        raise WriteError(
            f"--{flag} {folder} cannot be written ({error.strerror or error}); nothing was done. Choose a folder you "
            "can write to, or fix its permissions."
        ) from None
    finally:
        for path in created:
            with suppress(OSError):
                path.rmdir()


def refuse_if_no_space(folder: Path, need: int, what: str) -> None:
    """Known before writing: refuse rather than fill the disk."""
    free = shutil.disk_usage(next(p for p in (Path(folder), *Path(folder).parents) if p.exists())).free
    if free < need:
        raise WriteError(
            f"{what} to {folder} needs about {need:,} bytes, but only {free:,} are free there. Nothing was written; "
            "free some space or choose another folder."
        )


def write_failure(error: Exception, target: Path, need: int | None = None) -> str:
    """What a failed write says: which file, how much space it needed against what was free, and why."""
    free = shutil.disk_usage(next(p for p in (Path(target), *Path(target).parents) if p.exists())).free
    space = f"; it needed about {need:,} bytes and {free:,} are free there" if need else f"; {free:,} bytes free"
    reason = getattr(error, "strerror", None) or str(error)
    return f"writing {getattr(error, 'filename', None) or target} failed ({reason}){space}"


def write_text(path: Path, data: str | bytes) -> None:
    """Write `data` under a temporary name in the same folder, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, value, *, indent: int = 2) -> None:
    write_text(path, json.dumps(value, indent=indent, ensure_ascii=False, default=float) + "\n")


@contextmanager
def staging_folder(target: Path) -> Iterator[Path]:
    """A temporary folder beside `target` to build it in; removed afterwards, whatever happens. Move it into place
    with `replace_folder` before the block ends."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it owner-only; the result should be readable like any folder
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_folder(new: Path, target: Path) -> None:
    """Put folder `new` at `target` by renames; the old `target` is removed only once `new` is in place."""
    old = target.with_name(f".{target.name}.old-{os.getpid()}") if target.exists() else None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
        os.rename(target, old)
    try:
        os.rename(new, target)
    except BaseException:
        if old is not None:
            os.rename(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ---- one writer per folder -----------------------------------------------------------------------------------------

_CLAIMED: set[str] = set()  # the folders this process holds: a nested claim of one of them is its own


@contextmanager
def claim_folder(target: str | Path, what: str) -> Iterator[None]:
    """Hold `target` against every other writer until the block ends, or refuse at once, naming the holder.

    The claim is an exclusive `flock` on `.<name>.hf_sae-lock` beside `target`: atomic, and dropped by the kernel
    when its process dies, so a killed run leaves no claim to clear by hand. Checks such as "a new folder" belong
    inside the block, where no other writer can change the answer before the result is in place."""
    target = Path(target).expanduser().absolute()
    if str(target) in _CLAIMED:
        yield
        return
    lock = target.parent / f".{target.name}.hf_sae-lock"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = _locked(lock)
    except BlockingIOError:
        holder = ""
        with suppress(OSError):
            holder = lock.read_text(errors="replace").strip()
        raise WriteError(
            f"{what} {target} is being written by another process ({holder or 'starting'}); two writers would "
            "replace each other's work. Wait for that one to end, or choose another folder."
        ) from None
    except OSError as error:
        raise WriteError(f"{what} {target} cannot be claimed: {write_failure(error, lock)}.") from None
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode())
    _CLAIMED.add(str(target))
    try:
        yield
    finally:
        _CLAIMED.discard(str(target))
        lock.unlink(missing_ok=True)  # while still locked: a writer waiting on this file retries on a fresh one
        os.close(fd)


def _locked(lock: Path) -> int:
    """A descriptor of `lock`, exclusively flocked; BlockingIOError while another process holds it."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            with suppress(FileNotFoundError):  # its last holder has just removed it: try a fresh one
                if os.path.samestat(os.fstat(fd), os.stat(lock)):
                    os.ftruncate(fd, 0)
                    return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
