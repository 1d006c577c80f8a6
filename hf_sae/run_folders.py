"""A run's output folder: what a training run writes there, the checkpoints it holds, and whether a new run may
start there (a new run, a resumed one, or one that replaces an earlier run).

    checkpoint_folders   the complete `checkpoint-<step>` folders, oldest first
    resume_checkpoint    the checkpoint `--resume_from_checkpoint` names, or None for a new run
    check_output_dir     refuse a folder that holds another run, unless told what to do with it
    clear_output_dir     with --overwrite_output_dir, remove what an earlier run wrote there (and nothing else)
    resume_advice        where a stopped run can go on from: the newest intact checkpoint, if any
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers.utils import logging

from .errors import TrainingError
from .formats.tensors import non_finite
from .layout import CONFIG, EVAL_REPORT, FEATURES, METRICS, README, TRAINING_ARGS, WEIGHTS
from .trackers import TENSORBOARD_DIR, WANDB_DIR

if TYPE_CHECKING:
    from .arguments import SaeTrainingArguments

logger = logging.get_logger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
TRAINER_STATE = "trainer_state.pt"
CHECKPOINT_ERRORS = (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError)
# The files and folders a run writes in its output folder, in each configuration's and in each SAE's folder.
RUN_FILES = (METRICS, TRAINING_ARGS, EVAL_REPORT, README, CONFIG, WEIGHTS, FEATURES)
RUN_RECORDS = (CONFIG, METRICS, TRAINING_ARGS)  # what marks a folder of SAEs, a configuration, or a finished run
# The trackers' logs (`hf_sae`: where accelerate's trackers wrote in earlier versions).
TRACKER_DIRS = (TENSORBOARD_DIR, WANDB_DIR, "hf_sae")


def checkpoint_folders(output_dir: Path) -> list[Path]:
    """The complete `checkpoint-<step>` folders of a run, oldest first (a `.tmp` one is an interrupted write)."""
    found = [p for p in output_dir.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def resume_checkpoint(args: SaeTrainingArguments) -> Path | None:
    """The checkpoint `--resume_from_checkpoint` names (`latest`: the newest in output_dir; a bare name such as
    `checkpoint-500` that is no folder here: the one in output_dir), or None for a new run."""
    choice = args.resume_from_checkpoint
    if not choice:
        return None
    found = checkpoint_folders(Path(args.output_dir))
    path = (found[-1] if found else None) if choice == "latest" else Path(choice)
    if path is not None and not path.exists() and not path.is_absolute() and (Path(args.output_dir) / path).exists():
        path = Path(args.output_dir) / path
    if path is None or not (path / TRAINER_STATE).exists():
        where = f"{args.output_dir} holds no checkpoint" if path is None else f"No complete checkpoint at {path}"
        raise TrainingError(
            f"--resume_from_checkpoint {choice}: {where}. Expected a `{CHECKPOINT_PREFIX}<step>` folder written by "
            f"hf_sae (found in {args.output_dir}: {[p.name for p in found]}). Drop the flag to start a new run."
        )
    return path


def check_output_dir(args: SaeTrainingArguments) -> None:
    """Refuse an output directory holding another run unless told to overwrite it or resume from it (which must
    exist: checked here, before anything loads), saying what it holds and which of the two can work."""
    path = Path(args.output_dir)
    if resume_checkpoint(args) or args.overwrite_output_dir or not path.exists() or not any(path.iterdir()):
        return
    found = sorted(path.iterdir(), key=lambda p: p.name)
    good = newest_intact(path)
    if good is None:
        resume = "No checkpoint there is intact, so it cannot be resumed"
    else:
        latest = "latest" if good == checkpoint_folders(path)[-1] else str(good)
        resume = f"--resume_from_checkpoint {latest} continues it from {good.name}"
    fix = f"{resume}; --overwrite_output_dir starts again there (removing what hf_sae wrote); or choose another "
    fix += "--output_dir."
    if saved_saes(path):
        raise TrainingError(f"Output directory {path} already holds a run ({_listing(found)}). {fix}")
    if not run_files(path)[0]:
        raise TrainingError(
            f"Output directory {path} holds files that no hf_sae run wrote ({_listing(found)}). Choose another "
            "--output_dir, or pass --overwrite_output_dir to write the run beside them (they are left as they are)."
        )
    stale = [p.name for p in found if p.name.endswith(".tmp") or p.name in TRACKER_DIRS or p.name.startswith(".")]
    raise TrainingError(
        f"Output directory {path} holds an incomplete run: no SAEs were saved (it stopped before the end). It holds "
        f"{_listing(found)}; of these, {', '.join(stale) or 'nothing'} is stale (tracker logs, interrupted "
        f"checkpoint writes). {fix}"
    )


def clear_output_dir(args: SaeTrainingArguments) -> None:
    """With --overwrite_output_dir (and no resumption), remove what a previous hf_sae run wrote in output_dir:
    checkpoints, tracker logs, reports, SAE and configuration folders. Anything else is named and left, as is the
    activation cache this run reads. Call it on the main process after every check, before the run writes."""
    path = Path(args.output_dir)
    if not args.overwrite_output_dir or args.resume_from_checkpoint or not path.is_dir():
        return
    ours, theirs = run_files(path, Path(args.activation_cache) if args.activation_cache else None)
    removed = _listing(ours, path) if ours else "nothing"
    if ours:  # moved aside first: a removal cut short leaves a hidden folder, never half a checkpoint
        trash = path / f".removed.old-{os.getpid()}"
        trash.mkdir()
        for number, item in enumerate(ours):
            os.rename(item, trash / str(number))
        shutil.rmtree(trash)
    kept = f"; left {_listing(theirs, path)}, which hf_sae did not write." if theirs else "."
    logger.warning(f"--overwrite_output_dir: removed the previous run's {removed} from {path}{kept}")


def run_files(folder: Path, keep: Path | None = None) -> tuple[list[Path], list[Path]]:
    """`(ours, theirs)`: what in `folder` a hf_sae training run writes, and what else is there. A folder of SAEs or
    of one configuration is ours as a whole only when everything in it is."""
    ours, theirs = [], []
    for item in sorted(folder.iterdir(), key=lambda p: p.name):
        if keep is not None and item.absolute() == keep.absolute():
            theirs.append(item)
        elif _written_by_a_run(item):
            ours.append(item)
        elif item.is_dir() and not item.is_symlink() and any((item / name).is_file() for name in RUN_RECORDS):
            inner_ours, inner_theirs = run_files(item, keep)
            if inner_theirs:
                ours, theirs = ours + inner_ours, theirs + inner_theirs
            else:
                ours.append(item)
        else:
            theirs.append(item)
    return ours, theirs


def saved_saes(output_dir: Path) -> bool:
    """Whether a run saved its SAEs (or transcoder) there: what it does at the end, after training."""
    return any((output_dir / name).is_file() for name in RUN_RECORDS) or any(output_dir.glob(f"*/{CONFIG}"))


def _written_by_a_run(item: Path) -> bool:
    name = item.name
    if name.startswith("."):  # an interrupted atomic write, staging folder, probe or removal (`layout`, `hub`, here)
        return bool(re.search(r"^\.(staging-|hf_sae-)|\.(tmp|old)-", name))
    return name.startswith(CHECKPOINT_PREFIX) or name in RUN_FILES or (name in TRACKER_DIRS and item.is_dir())


def _listing(paths: list[Path], root: Path | None = None, limit: int = 8) -> str:
    names = [str(p.relative_to(root)) if root else p.name for p in paths]
    names = [f"{name}/" if path.is_dir() else name for name, path in zip(names, paths)]
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def resume_advice(output_dir: Path, but: Path | None = None) -> str:
    """Where a stopped run can go on from: the newest intact checkpoint in `output_dir` (other than `but`)."""
    good = newest_intact(output_dir, but)
    if good is None:
        return f"no checkpoint in {output_dir} is intact, so the run must start again"
    resume = f"--resume_from_checkpoint {good}"
    return f"of the checkpoints in {output_dir}, the newest intact one is {good}: resume from it with {resume}"


def newest_intact(output_dir: Path, but: Path | None = None) -> Path | None:
    """The newest checkpoint in `output_dir` (other than `but`) that loads and whose weights are finite, which is
    not always the newest one."""
    return next((p for p in reversed(checkpoint_folders(output_dir)) if p != but and _is_intact(p)), None)


def _is_intact(checkpoint: Path) -> bool:
    """Whether every file of `checkpoint` loads (tensors and plain values only) and its weights are finite."""
    try:
        files = {file.name: torch.load(file, weights_only=True) for file in checkpoint.glob("*.pt")}
    except CHECKPOINT_ERRORS:
        return False
    weights = [value.get("saes", {}) for name, value in files.items() if name.startswith("weights_rank")]
    return TRAINER_STATE in files and not any(non_finite(sae_tensors(saes)) for saes in weights)


def sae_tensors(saes: dict) -> dict[str, torch.Tensor]:
    """`{"<sae>.<tensor>": tensor}` of `{sae: state dict}`."""
    return {f"{name}.{key}": tensor for name, state in saes.items() for key, tensor in state.items()}
