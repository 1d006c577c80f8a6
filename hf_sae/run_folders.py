"""A run's output folder: what a training run writes there, the checkpoints it holds, and whether a new run may
start there (a new run, a resumed one, or one that replaces an earlier run).

    checkpoint_folders   the complete `checkpoint-<step>` folders, oldest first
    resume_checkpoint    the checkpoint `--resume_from_checkpoint` names, or None for a new run
    check_output_dir     refuse a folder that holds another run, unless told what to do with it
    resume_advice        where a stopped run can go on from: the newest intact checkpoint, if any
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .errors import TrainingError
from .formats.tensors import non_finite

if TYPE_CHECKING:
    from .arguments import SaeTrainingArguments

CHECKPOINT_PREFIX = "checkpoint-"
TRAINER_STATE = "trainer_state.pt"
CHECKPOINT_ERRORS = (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError)


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
    exist: checked here, before anything loads)."""
    path = Path(args.output_dir)
    if resume_checkpoint(args) or not path.exists() or not any(path.iterdir()):
        return
    if not args.overwrite_output_dir:
        raise TrainingError(
            f"Output directory {path} already holds a run ({', '.join(sorted(p.name for p in path.iterdir())[:5])}). "
            "Pass --overwrite_output_dir to replace it, --resume_from_checkpoint latest to continue it, or choose "
            "another --output_dir."
        )


def resume_advice(output_dir: Path, but: Path | None = None) -> str:
    """Where a stopped run can go on from: the newest checkpoint in `output_dir` (other than `but`) that loads and
    whose weights are finite, which is not always the newest one."""
    good = next((p for p in reversed(checkpoint_folders(output_dir)) if p != but and _is_intact(p)), None)
    if good is None:
        return f"no checkpoint in {output_dir} is intact, so the run must start again"
    resume = f"--resume_from_checkpoint {good}"
    return f"of the checkpoints in {output_dir}, the newest intact one is {good}: resume from it with {resume}"


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
