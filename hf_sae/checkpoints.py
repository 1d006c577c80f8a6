"""Resumable checkpoints of a training run: `checkpoint-<step>` folders in its output_dir, written atomically (into
a temporary folder, renamed once every process has written) and loaded back as tensors and plain values only
(`weights_only=True`; accelerate's `save_state` would pickle registered objects and load them with code execution).

    trainer_state.pt     step, counters, scales, and the run's signature, which a resumed run must match
    weights_rank{r}.pt   SAEs, optimiser, scheduler, fp16 loss scaler (rank 0's only under data parallelism, where
                         they are the same on every rank; each owner's with distributed hookpoints, each feature
                         shard's rows with --shard_features)
    buffer_rank{r}.pt    each rank's place in its data

    save_checkpoint, restore_checkpoint, load_weights   a trainer's state out, and back in
    run_signature                                       what a checkpoint shares with the run that resumes it
Which checkpoint --resume_from_checkpoint names, and what else the output folder holds: `run_folders`.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from accelerate.logging import get_logger

from .errors import TrainingError
from .formats.tensors import non_finite
from .layout import replace_folder, write_failure
from .run_folders import (
    CHECKPOINT_ERRORS,
    CHECKPOINT_PREFIX,
    TRAINER_STATE,
    checkpoint_folders,
    resume_advice,
    resume_checkpoint,
    sae_tensors,
)

if TYPE_CHECKING:
    from .training import SaeTrainer

logger = get_logger(__name__)

RUN_KEY = "run"  # in trainer_state.pt: the run's signature, compared on resume
# The arguments a resumed run must share with its checkpoint: they decide the text, its order and the batches.
RESUME_ARGUMENTS = ("dataset_name", "dataset_config_name", "dataset_split", "dataset_weights", "context_size",
                    "shuffle_seed", "batch_size", "gradient_accumulation_steps", "activation_cache")  # fmt: skip


def save_checkpoint(trainer: SaeTrainer) -> Path:
    """Write the trainer's `checkpoint-<step>`, then keep only the newest `save_total_limit` checkpoints."""
    acc, rank, output_dir = trainer.accelerator, trainer.accelerator.process_index, trainer.output_dir
    final = output_dir / f"{CHECKPOINT_PREFIX}{trainer.state.step}"
    if bad := non_finite(sae_tensors({n: sae.state_dict() for n, sae in trainer.saes.items()})):
        raise TrainingError(
            f"The weights became non-finite by step {trainer.state.step}: {bad}. {final.name} was not written, so "
            f"that no checkpoint holds them; {resume_advice(output_dir)}. Lower the learning rate or "
            "--max_grad_norm."
        )
    tmp = final.with_name(final.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    files = {f"buffer_rank{rank}.pt": trainer.buffer.state_dict()}
    if trainer.per_rank_weights or acc.is_main_process:
        files[f"weights_rank{rank}.pt"] = {
            "saes": {n: sae.state_dict() for n, sae in trainer.saes.items()}, "state": trainer.state.state_dict(),
            "optimizer": trainer.optimizer.state_dict(), "scheduler": trainer.scheduler.state_dict()}  # fmt: skip
        if acc.scaler is not None:  # fp16: a resumed run goes on with the loss scale it had learnt
            files[f"weights_rank{rank}.pt"]["scaler"] = acc.scaler.state_dict()
    if acc.is_main_process:
        files[TRAINER_STATE] = {**trainer.state.state_dict(), RUN_KEY: run_signature(trainer)}
    need = sum(_tensor_bytes(value) for value in files.values())
    name = next(iter(files))
    try:
        if shutil.disk_usage(tmp).free < need:  # refuse before writing half a checkpoint
            raise OSError(errno.ENOSPC, "not enough free space for the checkpoint", str(tmp))
        for name, value in files.items():
            torch.save(value, tmp / name)
    except (OSError, RuntimeError) as error:  # torch.save reports a full disk as a RuntimeError
        shutil.rmtree(tmp, ignore_errors=True)
        failure = error if isinstance(error, OSError) else OSError(errno.EIO, str(error), str(tmp / name))
        raise TrainingError(
            f"Checkpoint {final.name} could not be saved: {write_failure(failure, tmp, need)}. Its temporary "
            f"folder was removed; the intact checkpoints are {[p.name for p in checkpoint_folders(output_dir)]} "
            f"in {output_dir}. Free some space, then resume with --resume_from_checkpoint latest."
        ) from error
    acc.wait_for_everyone()
    if acc.is_main_process:  # a run resumed from an older checkpoint replaces the abandoned later ones
        replace_folder(tmp, final)
        for old in checkpoint_folders(output_dir)[: -trainer.args.save_total_limit or None]:
            shutil.rmtree(old)
    acc.wait_for_everyone()
    return final


def restore_checkpoint(trainer: SaeTrainer) -> Path | None:
    """Restore step, counters and the data position from the checkpoint the arguments name, if any; its weights
    wait in `trainer.resumed_weights` for `load_weights`, once the optimiser exists."""
    path = resume_checkpoint(trainer.args)
    if path is None:
        return None
    saved = _load_file(path / TRAINER_STATE)
    _check_same_run(trainer, path, saved.pop(RUN_KEY, None))
    shards, saved_shards = trainer.state.feature_shards, saved.get("feature_shards", 1)
    if saved_shards != shards:
        raise TrainingError(
            f"{path} was written with --shard_features {saved_shards}; this run has --shard_features {shards}. Each "
            f"process's checkpoint holds its own rows of every SAE, so resume with --shard_features {saved_shards}."
        )
    world = trainer.accelerator.num_processes
    if saved.get("world_size", 1) != world:
        raise TrainingError(
            f"{path} was written by a run on {saved.get('world_size', 1)} process(es); this one has {world}. "
            "Each process resumes its own shard of the data, so resume with the same number of processes."
        )
    rank = trainer.accelerator.process_index
    trainer.resumed_weights = _load_file(path / f"weights_rank{rank if trainer.per_rank_weights else 0}.pt")
    if bad := non_finite(sae_tensors(trainer.resumed_weights.get("saes", {}))):
        raise TrainingError(
            f"{path} holds non-finite weights ({bad}); a run resumed from it would train on NaN. Instead, "
            f"{resume_advice(path.parent, but=path)}."
        )
    if trainer.per_rank_weights:  # each rank's counters and scales belong to its own SAEs (or rows of them)
        saved = trainer.resumed_weights["state"]
    trainer.state.load_state_dict(saved, {name: sae.device for name, sae in trainer.saes.items()})
    trainer.buffer.load_state_dict(_load_file(path / f"buffer_rank{rank}.pt"))
    logger.info(f"Resuming from {path} at step {trainer.state.step}.", main_process_only=True)
    return path


def load_weights(trainer: SaeTrainer) -> None:
    """The restored SAEs, optimiser, scheduler and fp16 loss scale, into the prepared trainer."""
    weights = trainer.resumed_weights
    for name, sae in trainer.saes.items():
        sae.load_state_dict(weights["saes"][name])
    trainer.optimizer.load_state_dict(weights["optimizer"])
    trainer.scheduler.load_state_dict(weights["scheduler"])
    if trainer.accelerator.scaler is not None and "scaler" in weights:
        trainer.accelerator.scaler.load_state_dict(weights["scaler"])


def run_signature(trainer: SaeTrainer) -> dict:
    """What a checkpoint must share with the run that resumes it: each SAE's (or cross-layer transcoder's) config
    (architecture, widths, k, hookpoints, base model) and the arguments that decide the data and its batches."""
    saes = {name: model.signature() for name, model in trainer.trainees.items()}
    return {"saes": saes, "args": {key: trainer.hparams.get(key) for key in RESUME_ARGUMENTS}}


def _check_same_run(trainer: SaeTrainer, path: Path, saved: dict | None) -> None:
    if missing := _missing_record(saved):  # without it nothing says which arguments the checkpoint belongs to
        raise TrainingError(
            f"{path / TRAINER_STATE} lacks the record of its run ({', '.join(missing)}): the SAEs' configs and the "
            f"arguments that decide the data ({', '.join(RESUME_ARGUMENTS)}), so this run cannot be checked "
            "against it and could go on with other arguments. Start a new run (--overwrite_output_dir, or another "
            "--output_dir)."
        )
    now, differences = run_signature(trainer), []
    for name in sorted(set(saved["saes"]) | set(now["saes"])):
        before, after = saved["saes"].get(name), now["saes"].get(name)
        if before is None or after is None:
            differences.append(f"SAE {name!r}: {'not in the checkpoint' if before is None else 'not in this run'}")
            continue
        keys = sorted(set(before) | set(after))
        differences += [f"{name} {key}: checkpoint {before.get(key)!r}, now {after.get(key)!r}"
                        for key in keys if before.get(key) != after.get(key)]  # fmt: skip
    differences += [f"--{key}: checkpoint {value!r}, now {now['args'].get(key)!r}"
                    for key, value in saved["args"].items() if value != now["args"].get(key)]  # fmt: skip
    if differences:
        raise TrainingError(
            f"{path} is from a run with other arguments: {'; '.join(differences)}. Resume with the arguments it "
            f"was trained with (the run's {trainer.output_dir}/training_args.json has them), or start a new run in "
            "another --output_dir."
        )


def _missing_record(saved) -> list[str]:
    """What the run record of a checkpoint lacks: the record itself, its parts, or arguments it must name."""
    if not isinstance(saved, dict):
        return [repr(RUN_KEY)]
    if missing := [f"{RUN_KEY}.{part}" for part in ("saes", "args") if not isinstance(saved.get(part), dict)]:
        return missing
    return [f"{RUN_KEY}.args.{key}" for key in RESUME_ARGUMENTS if key not in saved["args"]]


def _load_file(path: Path):
    """A checkpoint file hf_sae wrote: tensors and plain values only (`weights_only`), so a file that asks to run
    code, or a damaged one, is refused and never executed."""
    try:
        return torch.load(path, weights_only=True)
    except CHECKPOINT_ERRORS as error:
        others = [p for p in checkpoint_folders(path.parent.parent) if p != path.parent]
        raise TrainingError(
            f"{path} cannot be loaded as a checkpoint hf_sae wrote ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}); it is damaged, or holds more than tensors and "
            f"plain values and is refused rather than run. Other checkpoints in {path.parent.parent}: "
            f"{[p.name for p in others] or 'none'}; {resume_advice(path.parent.parent, but=path.parent)}."
        ) from None


def _tensor_bytes(value) -> int:
    """Bytes of the tensors in a nested state dict: about what `torch.save` writes."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(_tensor_bytes(v) for v in value)
    return 0
