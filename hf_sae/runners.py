"""From arguments to files: what `hf-sae train`, `hf-sae eval` and `hf-sae features` run. Each runner checks every
argument first, then loads the LM (and the SAEs, whose base model is the default LM), the text, does its work and
writes its results through `layout` and `hub.save_saes`."""

import dataclasses
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from accelerate.utils import set_seed
from datasets import IterableDataset
from transformers.utils import logging

from .activations import Chunk, ShufflingBuffer, batched, harvest, read_cache, write_cache
from .arguments import (
    ActivationArguments,
    DataArguments,
    EvaluationArguments,
    FeatureArguments,
    SaeArguments,
    SaeTrainingArguments,
    check_all,
)
from .data import check_context_size, iter_blocks, load_token_blocks, read_blocks, split_label
from .distribution import hookpoint_owners
from .errors import ArgumentError, DataError, TrainingError
from .evaluation import evaluate_saes, plot_firing_density
from .feature_store import LABELS, FeatureMetadata
from .features import collect_feature_metadata
from .hookpoints import capture_activations, resolve_hookpoints
from .hub import load_saes, save_saes
from .layout import (
    EVAL_REPORT,
    FEATURES,
    METRICS,
    PER_SOURCE,
    TRAINING_ARGS,
    find_sae_folders,
    read_json,
    sae_metrics,
    write_json,
)
from .lm_forward import resolve_lm_dtype, special_token_ids
from .modeling_sae import SaeModel
from .models import load_model
from .offline.builtin_models import builtin_name
from .training import SaeTrainer, check_output_dir, make_accelerator

logger = logging.get_logger(__name__)

HELD_OUT_SPLIT = "test"


# ---- train ----------------------------------------------------------------------------------------------------------


def train_saes(
    sae_args: SaeArguments | None = None,
    lm_args: ActivationArguments | None = None,
    data_args: DataArguments | None = None,
    train_args: SaeTrainingArguments | None = None,
) -> dict:
    """Train one SAE per hookpoint, save them in `train_args.output_dir`, and return the metrics report.

    Example:

    ```python
    >>> report = train_saes(train_args=SaeTrainingArguments(train_tokens=200_000, output_dir="out"))
    >>> report["model.layers.15"]["fvu"]
    ```
    """
    sae_args, lm_args = sae_args or SaeArguments(), lm_args or ActivationArguments()
    data_args, args = data_args or DataArguments(), train_args or SaeTrainingArguments()
    check_all(sae_args, lm_args, data_args, args)
    check_output_dir(args)  # before anything expensive
    accelerator = make_accelerator(args)
    world, rank = accelerator.num_processes, accelerator.process_index
    micro_batches = world * args.gradient_accumulation_steps
    if args.batch_size % micro_batches:
        raise ArgumentError(
            f"--batch_size {args.batch_size} must divide evenly over {world} process(es) x "
            f"{args.gradient_accumulation_steps} accumulation step(s); pick a multiple of {micro_batches}."
        )
    logger.info(f"Process {rank} of {world} on {accelerator.device} ({accelerator.distributed_type}).")
    owners = hookpoint_owners(sae_args.hookpoints, world) if args.distribute_hookpoints else None
    set_seed(args.seed)
    model, tokenizer = _load_lm(lm_args, accelerator.device)
    model.requires_grad_(False)
    resolve_hookpoints(model, sae_args.hookpoints)  # unknown names fail here, listing the closest
    check_context_size(data_args.context_size, _max_positions(model))
    widths = activation_widths(model, sae_args.hookpoints)
    own = [h for h in widths if owners is None or owners[h] == rank]  # this process's SAEs
    saes = {h: _new_sae(sae_args.config(h, widths[h], model.name_or_path), args.seed, sae_args.hookpoints.index(h))
            for h in own}  # fmt: skip
    saes = {h: sae.to(accelerator.device) for h, sae in saes.items()}
    logger.info(f"Process {rank} of {world} trains the SAEs of {own}.")

    autocast_dtype = resolve_lm_dtype(lm_args.lm_dtype, accelerator.device)
    chunks = _activation_source(accelerator, model, tokenizer, sae_args, lm_args, data_args, args, autocast_dtype)
    # No larger than this process's share of the run: a short run must not harvest more than it trains on first.
    capacity = min(args.shuffle_buffer_tokens, args.train_tokens // world)
    buffer = ShufflingBuffer(chunks, args.batch_size // micro_batches, capacity, seed=args.seed + rank)
    trainer = SaeTrainer(args, saes, buffer, accelerator, owners)
    groups = (sae_args, lm_args, data_args, args)
    trainer.hparams = {key: value for group in groups for key, value in dataclasses.asdict(group).items()}
    start = time.perf_counter()
    trained = trainer.train()
    seconds = time.perf_counter() - start
    dead = trainer.dead_fractions()  # a collective-free read of the trainer's state, on every rank

    report, histograms = {}, {}
    if accelerator.is_main_process:
        held_out, histograms = _held_out_report(
            model, tokenizer, trained, lm_args, data_args, args.eval_tokens, autocast_dtype
        )
        for name, sae in trained.items():
            run = {
                "architecture": sae.config.architecture,
                "num_latents": sae.config.num_latents,
                "k": sae.config.k,
                "train_tokens": trainer.state.tokens,
                "train_seconds": round(seconds, 1),
            }
            report[name] = {**run, **held_out.get(name, {}), **dead[name]}
        out = Path(args.output_dir)
        save_saes(trained, out, metrics={name: sae_metrics(metrics) for name, metrics in report.items()})
        write_json(out / METRICS, report)
        settings = [dataclasses.asdict(group) for group in (sae_args, lm_args, data_args, args)]
        write_json(out / TRAINING_ARGS, {key: value for group in settings for key, value in group.items()})
    accelerator.wait_for_everyone()
    if accelerator.is_main_process and report:
        trainer.log_report(report, histograms)
    trainer.end()  # last: the trackers and the process group end after every collective
    return report


def _new_sae(config, seed: int, index: int) -> SaeModel:
    """An SAE initialised from its own seed, so that its initial weights do not depend on which other SAEs this
    process builds (with distributed hookpoints, each process builds only its own)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + index)
        return SaeModel(config)


def _load_lm(lm_args: ActivationArguments, device):
    """The LM on `device`, or spread over the GPUs of this machine by `--lm_device_map` (e.g. `auto`)."""
    if lm_args.lm_device_map:
        return load_model(lm_args.model_name_or_path, device_map=lm_args.lm_device_map)
    return load_model(lm_args.model_name_or_path, device=device)


def _max_positions(model) -> int | None:
    return getattr(model.config, "max_position_embeddings", None)


def activation_widths(model, hookpoints: list[str]) -> dict[str, int]:
    """Each hookpoint's activation width, from one stopped forward on two tokens."""
    probe = torch.zeros(1, 2, dtype=torch.long, device=model.device)
    with torch.no_grad():
        return {h: acts.shape[-1] for h, acts in capture_activations(model, hookpoints, probe).items()}


def _activation_source(
    accelerator, model, tokenizer, sae_args, lm_args, data_args, args, autocast_dtype
) -> Callable[[int], Iterator[Chunk]]:
    """`skip -> Iterator[Chunk]` over this process's share: live from the LM, or replayed from an on-disk cache."""
    world, rank = accelerator.num_processes, accelerator.process_index
    max_positions = _max_positions(model)
    with accelerator.main_process_first():  # tokenise once; the other processes reuse datasets' cache
        blocks = load_token_blocks(data_args, tokenizer, max_positions=max_positions, rank=rank, world_size=world)
    excluded, hookpoints, lm_batch = special_token_ids(tokenizer), sae_args.hookpoints, lm_args.lm_batch_size

    def live(skip: int) -> Iterator[Chunk]:
        rest = _skip_blocks(blocks, skip * lm_batch)
        return harvest(
            model,
            hookpoints,
            batched(iter_blocks(rest), lm_batch),
            exclude_token_ids=excluded,
            outlier_factor=lm_args.outlier_factor,
            autocast_dtype=autocast_dtype,
        )

    if not args.activation_cache:
        return live
    path = Path(args.activation_cache)
    if not path.exists():
        if world > 1:
            raise TrainingError("Write the activation cache with one process first, then train from it with many.")
        logger.info(f"Writing {args.train_tokens:,} tokens of activations to {path}.")
        write_cache(live(0), path, max_tokens=args.train_tokens)
    chunk_tokens = lm_batch * data_args.context_size
    return lambda skip: read_cache(path, hookpoints, chunk_tokens=chunk_tokens, skip=skip, rank=rank, world_size=world)


def _skip_blocks(blocks, count: int):
    if not count:
        return blocks
    if isinstance(blocks, IterableDataset):
        return blocks.skip(count)
    return blocks.select(range(min(count, len(blocks)), len(blocks)))


def _held_out_report(model, tokenizer, saes, lm_args, data_args, max_tokens: int, autocast_dtype) -> tuple[dict, dict]:
    """FVU, L0 and dead fraction on the held-out split of the training text (training's final report), pooled and
    per source when the text names its sources, with the training text's sources and weights (only those when
    there is no such split); and each SAE's held-out firing-density histogram, for the trackers."""
    names = [name or "built-in corpus" for name in data_args.dataset_names]
    data = {"datasets": names, "dataset_weights": data_args.dataset_weights}
    if not max_tokens:
        return dict.fromkeys(saes, data), {}
    try:
        blocks = load_token_blocks(dataclasses.replace(data_args, dataset_split=HELD_OUT_SPLIT), tokenizer)
    except (DataError, ValueError, KeyError) as error:
        logger.warning(f"No held-out split {HELD_OUT_SPLIT!r} ({error}); the report has training metrics only.")
        return dict.fromkeys(saes, data), {}
    input_ids, sources = read_blocks(blocks, max_tokens, data_args.source_column)
    report = evaluate_saes(
        model,
        saes,
        input_ids,
        exclude_token_ids=tokenizer.all_special_ids,
        max_tokens=max_tokens,
        batch_size=lm_args.lm_batch_size,
        outlier_factor=lm_args.outlier_factor,
        autocast_dtype=autocast_dtype,
        lm_metrics=False,
        sources=sources,
    )
    _log_per_source(report)
    held_out = dataclasses.replace(data_args, dataset_split=HELD_OUT_SPLIT)
    label = ", ".join(dict.fromkeys(split_label(name, held_out) for name in data_args.dataset_names))
    histograms = {name: metrics["firing_density_histogram"] for name, metrics in report.items()}
    return {
        name: {**sae_metrics(metrics), "eval_split": label, **data} for name, metrics in report.items()
    }, histograms


def _log_per_source(report: dict) -> None:
    for name, metrics in report.items():
        for source, values in metrics.get(PER_SOURCE, {}).items():
            numbers = ", ".join(f"{key} {value:.4g}" for key, value in values.items())
            logger.info(f"{name} on {source}: {numbers}")


# ---- SAEs with their base model -------------------------------------------------------------------------------------


def load_saes_and_lm(
    source: str,
    hookpoints: list[str] | None,
    lm_args: ActivationArguments,
    *,
    revision: str | None = None,
    device: str | None = None,
):
    """`(saes, model, tokenizer)`: SAEs by hookpoint from a local folder (a training run's too: only its SAE
    folders count, not its checkpoints or logs) or a Hub repo, and their LM, by default their base model (the
    built-in offline copy when that is the built-in model's Hub id)."""
    path = Path(source).expanduser()
    if path.is_dir() and hookpoints is None:
        hookpoints = list(find_sae_folders(path)[0]) or None
    saes = load_saes(source, hookpoints, revision=revision)
    name = lm_args.model_name_or_path
    if name is None:
        names = {sae.config.base_model_name_or_path for sae in saes.values()} - {None}
        if len(names) > 1:
            raise ArgumentError(f"These SAEs come from different models ({sorted(names)}); pass --model_name_or_path.")
        name = builtin_name(names.pop() if names else None)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")  # the GPU where there is one
    model, tokenizer = _load_lm(dataclasses.replace(lm_args, model_name_or_path=name), device)
    model.requires_grad_(False)
    return {h: sae.to(model.device).eval() for h, sae in saes.items()}, model, tokenizer


# ---- eval -----------------------------------------------------------------------------------------------------------


def run_evaluation(lm_args: ActivationArguments, data_args: DataArguments, args: EvaluationArguments) -> dict:
    """Load the SAEs, their LM and the text, evaluate, and write the report and plots to `args.output_dir`."""
    check_all(lm_args, data_args, args)
    if args.save_beside_saes and not Path(args.sae).expanduser().is_dir():
        raise ArgumentError(f"--save_beside_saes writes into local SAE folders, but {args.sae!r} is not one. Drop it.")
    saes, model, tokenizer = load_saes_and_lm(
        args.sae, args.hookpoints, lm_args, revision=args.revision, device=args.device
    )
    blocks = load_token_blocks(data_args, tokenizer, max_positions=_max_positions(model))
    input_ids, sources = read_blocks(blocks, args.eval_tokens, data_args.source_column)
    report = evaluate_saes(
        model,
        saes,
        input_ids,
        exclude_token_ids=tokenizer.all_special_ids,
        max_tokens=args.eval_tokens,
        batch_size=lm_args.lm_batch_size,
        outlier_factor=lm_args.outlier_factor,
        lm_metrics=args.lm_metrics,
        autocast_dtype=resolve_lm_dtype(lm_args.lm_dtype, model.device),
        dense_threshold=args.dense_threshold,
        sources=sources,
    )
    _log_per_source(report)
    label = ", ".join(dict.fromkeys(split_label(name, data_args) for name in data_args.dataset_names))
    logger.info(f"Evaluated on {label} of {', '.join(map(str, data_args.dataset_names))}.")
    report = {name: {"eval_split": label, **metrics} for name, metrics in report.items()}
    out = Path(args.output_dir)
    write_json(out / EVAL_REPORT, report)
    settings = [dataclasses.asdict(group) for group in (lm_args, data_args, args)]
    write_json(
        out / "eval_args.json", {k: v for group in settings for k, v in group.items()} | {"model": model.name_or_path}
    )
    for name, metrics in report.items():
        plot_firing_density(metrics, out / f"firing_density_{name}.png", title=name, threshold=args.dense_threshold)
        if args.save_beside_saes:
            beside = Path(saes[name].name_or_path) / METRICS
            existing = read_json(beside) if beside.is_file() else {}
            write_json(beside, existing | sae_metrics(metrics))
    logger.info(f"Evaluation report written to {out / EVAL_REPORT}")
    return report


# ---- features -------------------------------------------------------------------------------------------------------


def run_features(lm_args: ActivationArguments, data_args: DataArguments, args: FeatureArguments) -> FeatureMetadata:
    """`hf-sae features`: collect and save `<sae>/features/`, keeping the labels people set on an earlier run."""
    check_all(lm_args, data_args, args)
    sae, model, tokenizer = load_sae_and_lm(args.sae, lm_args, device=args.device)
    blocks = load_token_blocks(data_args, tokenizer, max_positions=_max_positions(model))
    features = collect_feature_metadata(
        model,
        tokenizer,
        sae,
        batched(iter_blocks(blocks), lm_args.lm_batch_size),
        hookpoint=args.hookpoint,
        max_tokens=args.max_tokens,
        top_n=args.top_n,
        before=args.context_before,
        after=args.context_after,
        sample_size=args.sample_size,
        skip_after_special=args.skip_after_special,
        outlier_factor=lm_args.outlier_factor,
        autocast_dtype=resolve_lm_dtype(lm_args.lm_dtype, model.device),
        settings={"data": dataclasses.asdict(data_args)},
    )
    folder = Path(args.sae) / FEATURES
    if (folder / LABELS).is_file():
        features.labels = FeatureMetadata.load(folder).labels
    features.save_pretrained(folder)
    return features


def load_sae_and_lm(sae_dir: str, lm_args: ActivationArguments, *, device: str | None = None):
    """`(sae, model, tokenizer)` for one SAE folder, as `load_saes_and_lm`."""
    path = Path(sae_dir).expanduser()
    if not path.is_dir():
        raise ArgumentError(f"--sae must be a local SAE folder (config.json, model.safetensors); got {sae_dir!r}.")
    saes, model, tokenizer = load_saes_and_lm(str(path), None, lm_args, device=device)
    if len(saes) != 1:
        raise ArgumentError(f"{sae_dir} holds {len(saes)} SAEs ({list(saes)}); pass the folder of one of them.")
    return next(iter(saes.values())), model, tokenizer
