"""From arguments to saved SAEs: load the LM and the text, build the activation stream and the SAEs, train,
measure on held-out text, save. This is what `hf-sae train` and `scripts/train_sae.py` run."""

import dataclasses
import json
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from datasets import IterableDataset

from .activations import Chunk, ShufflingBuffer, batched, harvest, read_cache, resolve_lm_dtype, write_cache
from .configuration_sae import SaeConfig
from .data import DataArguments, check_context_size, iter_blocks, load_token_blocks
from .errors import TrainingError
from .evaluation import evaluate_held_out
from .hooks import capture_activations, resolve_hookpoints
from .modeling_sae import SaeModel
from .models import load_model
from .training import SaeTrainer, SaeTrainingArguments, check_output_dir, make_accelerator

logger = get_logger(__name__)


def train_saes(data_args: DataArguments, args: SaeTrainingArguments) -> dict:
    """Train one SAE per hookpoint as `args` says, save them in `args.output_dir`, and return the metrics report.

    Example:

    ```python
    >>> from hf_sae.data import DataArguments
    >>> from hf_sae.training import SaeTrainingArguments
    >>> report = train_saes(DataArguments(), SaeTrainingArguments(train_tokens=200_000, output_dir="out"))
    >>> report["model.layers.15"]["fvu"]
    ```
    """
    check_output_dir(args)  # before anything expensive
    accelerator = make_accelerator(args)
    world, rank = accelerator.num_processes, accelerator.process_index
    if args.batch_size % world:
        raise TrainingError(f"--batch_size {args.batch_size} must divide evenly over {world} processes.")
    set_seed(args.seed)
    model, tokenizer = load_model(args.model_name_or_path, device=accelerator.device)
    model.requires_grad_(False)
    resolve_hookpoints(model, args.hookpoints)  # unknown names fail here, listing the closest
    check_context_size(data_args.context_size, getattr(model.config, "max_position_embeddings", None))
    saes = {hookpoint: SaeModel(sae_config(args, hookpoint, width, model.name_or_path)).to(accelerator.device)
            for hookpoint, width in activation_widths(model, args.hookpoints).items()}  # fmt: skip

    autocast_dtype = resolve_lm_dtype(args.lm_dtype, accelerator.device)
    chunks = _activation_source(accelerator, model, tokenizer, data_args, args, autocast_dtype)
    buffer = ShufflingBuffer(chunks, args.batch_size // world, args.shuffle_buffer_tokens, seed=args.seed + rank)
    trainer = SaeTrainer(args, saes, buffer, accelerator)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    trained = trainer.trained_saes()

    report = {}
    if accelerator.is_main_process:
        held_out = evaluate_held_out(model, tokenizer, trained, data_args, max_tokens=args.eval_tokens,
                                     batch_size=args.lm_batch_size, outlier_factor=args.outlier_factor,
                                     autocast_dtype=autocast_dtype, lm_metrics=False)  # fmt: skip
        for name, sae in trained.items():
            report[name] = {
                "architecture": sae.config.architecture,
                "num_latents": sae.config.num_latents,
                "k": sae.config.k,
                "train_tokens": trainer.state.tokens,
                "train_seconds": round(seconds, 1),
                **held_out.get(name, {}),
                **trainer.dead_fractions()[name],
            }
        save_run(trained, report, args)
    accelerator.wait_for_everyone()
    return report


def sae_config(args: SaeTrainingArguments, hookpoint: str, d_in: int, base_model: str) -> SaeConfig:
    size = {"num_latents": args.num_latents} if args.num_latents else {"expansion_factor": args.expansion_factor}
    return SaeConfig(
        d_in=d_in,
        **size,
        architecture=args.architecture,
        k=args.k if args.architecture in ("topk", "batchtopk") else None,
        sparsity_coefficient=args.sparsity_coefficient,
        hookpoint=hookpoint,
        base_model_name_or_path=base_model,
    )


def activation_widths(model, hookpoints: list[str]) -> dict[str, int]:
    """Each hookpoint's activation width, from one stopped forward on two tokens."""
    probe = torch.zeros(1, 2, dtype=torch.long, device=model.device)
    with torch.no_grad():
        return {h: acts.shape[-1] for h, acts in capture_activations(model, hookpoints, probe).items()}


def _activation_source(accelerator, model, tokenizer, data_args, args, autocast_dtype) -> Callable[[int], Iterator]:
    """`skip -> Iterator[Chunk]` over this process's share: live from the LM, or replayed from an on-disk cache."""
    world, rank = accelerator.num_processes, accelerator.process_index
    with accelerator.main_process_first():  # tokenise once; the other processes reuse datasets' cache
        blocks = load_token_blocks(data_args, tokenizer, max_positions=getattr(model.config, "max_position_embeddings",
                                   None), rank=rank, world_size=world)  # fmt: skip
    excluded = tokenizer.all_special_ids

    def live(skip: int) -> Iterator[Chunk]:
        rest = _skip_blocks(blocks, skip * args.lm_batch_size)
        return harvest(model, args.hookpoints, batched(iter_blocks(rest), args.lm_batch_size),
                       exclude_token_ids=excluded, outlier_factor=args.outlier_factor,
                       autocast_dtype=autocast_dtype)  # fmt: skip

    if not args.activation_cache:
        return live
    path = Path(args.activation_cache)
    if not path.exists():
        if world > 1:
            raise TrainingError("Write the activation cache with one process first, then train from it with many.")
        logger.info(f"Writing {args.train_tokens:,} tokens of activations to {path}.")
        write_cache(live(0), path, max_tokens=args.train_tokens)
    chunk_tokens = args.lm_batch_size * data_args.context_size
    return lambda skip: read_cache(path, args.hookpoints, chunk_tokens=chunk_tokens, skip=skip, rank=rank,
                                   world_size=world)  # fmt: skip


def _skip_blocks(blocks, count: int):
    if not count:
        return blocks
    if isinstance(blocks, IterableDataset):
        return blocks.skip(count)
    return blocks.select(range(min(count, len(blocks)), len(blocks)))


def save_run(saes: dict[str, SaeModel], report: dict, args: SaeTrainingArguments) -> None:
    """Each SAE in `<output_dir>/<name>/`, plus `metrics.json`: each written under a temporary name, then renamed."""
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, sae in saes.items():
        target = out / name
        tmp = out / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        sae.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    tmp = out / ".metrics.json.tmp"
    tmp.write_text(json.dumps(report, indent=2))
    tmp.rename(out / "metrics.json")
    (out / "training_args.json").write_text(json.dumps(dataclasses.asdict(args), indent=2))
