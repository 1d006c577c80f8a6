"""From arguments to files: what `hf-sae train`, `cache`, `eval` and `features` run. Each runner checks every
argument first, then loads the LM (and the SAEs, whose base model is the default LM), the text, does its work and
writes its results through `layout` and `hub.save_saes`."""

import dataclasses
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from accelerate.utils import set_seed
from datasets import IterableDataset
from tqdm.auto import tqdm
from transformers.utils import logging

from .activation_cache import ActivationCache, CacheReplay, block_batches, harvest_records, replay_tokens, write_cache
from .activations import Chunk, ShufflingBuffer, batched, harvest, prefetch
from .arguments import (
    ActivationArguments,
    CacheArguments,
    DataArguments,
    EvaluationArguments,
    FeatureArguments,
    SaeArguments,
    SaeTrainingArguments,
    check_all,
    check_fits_in_memory,
)
from .cpu_memory import keep_freed_memory
from .data import check_context_size, iter_blocks, load_token_blocks, read_blocks, split_label
from .distribution import hookpoint_owners
from .errors import ArgumentError, DataError, TrainingError, WriteError
from .evaluation import evaluate_saes, plot_firing_density
from .feature_store import EXPLANATIONS, LABELS, FeatureMetadata
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
    probe_writable,
    read_json,
    sae_metrics,
    write_json,
)
from .lm_forward import resolve_lm_dtype, special_token_ids
from .modeling_sae import SaeModel
from .models import load_model, model_skeleton
from .offline.builtin_models import DEFAULT_MODEL, builtin_name
from .sweeps import SweepRun, sweep_runs
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
    keep_freed_memory()  # every step's large tensors would fault in afresh otherwise
    runs = sweep_runs(sae_args, args.learning_rate)  # every sweep entry checked before anything expensive
    check_output_dir(args)
    probe_writable(Path(args.output_dir), "output_dir")  # not after hours of training
    check_against_lm_config(lm_args, sae_args.harvested_hookpoints(), data_args.context_size)
    cache = _open_cache(args, lm_args, sae_args.harvested_hookpoints())  # an existing cache must match this run
    if cache is not None:
        args = dataclasses.replace(args, train_tokens=replay_tokens(cache, args.train_tokens, args.epochs,
                                                                   args.batch_size))  # fmt: skip
    accelerator = make_accelerator(args)
    world, rank = accelerator.num_processes, accelerator.process_index
    micro_batches = world * args.gradient_accumulation_steps
    if args.batch_size % micro_batches:
        raise ArgumentError(
            f"--batch_size {args.batch_size} must divide evenly over {world} process(es) x "
            f"{args.gradient_accumulation_steps} accumulation step(s); pick a multiple of {micro_batches}."
        )
    logger.info(f"Process {rank} of {world} on {accelerator.device} ({accelerator.distributed_type}).")
    pairs = sae_args.hookpoint_pairs()  # {input hookpoint: output hookpoint, None for an SAE}
    if args.distribute_hookpoints and any(pairs.values()):
        raise ArgumentError(
            "--distribute_hookpoints sends each hookpoint's activations to one owner, but a transcoder needs two "
            f"({ {h: o for h, o in pairs.items() if o} }). Drop --distribute_hookpoints to train transcoders."
        )
    owners = hookpoint_owners(list(pairs), world) if args.distribute_hookpoints else None
    set_seed(args.seed)
    model, tokenizer = _load_lm(lm_args, accelerator.device)
    model.requires_grad_(False)
    harvested = sae_args.harvested_hookpoints()
    resolve_hookpoints(model, harvested)  # unknown names fail here, listing the closest
    check_context_size(data_args.context_size, _max_positions(model))
    widths = activation_widths(model, harvested, pairs)
    if cache is not None:
        cache.check_run(model_identity(lm_args.model_name_or_path), harvested, widths)
    own = [h for h in pairs if owners is None or owners[h] == rank]  # this process's SAEs
    configs = {(h, index): run.sae_args.config(h, widths[h], model.name_or_path, pairs[h], widths.get(pairs[h]))
               for h in own for index, run in enumerate(runs)}  # fmt: skip
    for config in configs.values():  # the exact width is known now: refuse before allocating what cannot fit
        check_fits_in_memory(config.num_latents, config.d_in, len(configs), str(accelerator.device))
    saes, rates = {}, {}
    for h in own:
        for index, run in enumerate(runs):
            config = configs[h, index]
            name = run.sae_name(h)
            saes[name] = _new_sae(config, args.seed, list(pairs).index(h) * len(runs) + index)
            saes[name], rates[name] = saes[name].to(accelerator.device), run.learning_rate
    logger.info(f"Process {rank} of {world} trains the SAEs of {own}: {list(saes)}.")

    autocast_dtype = resolve_lm_dtype(lm_args.lm_dtype, accelerator.device)
    micro = args.batch_size // micro_batches
    if args.activation_cache:
        if cache is None:  # written now from the text, then replayed like any cache
            if world > 1:
                raise TrainingError("Write the activation cache with one process first, then train from it with many.")
            cache_args = CacheArguments(args.activation_cache, sae_args.harvested_hookpoints(), args.train_tokens)
            _write_cache(model, tokenizer, lm_args, data_args, cache_args, autocast_dtype)
            cache = ActivationCache(args.activation_cache)
            train_tokens = replay_tokens(cache, args.train_tokens, args.epochs, args.batch_size)
            args = dataclasses.replace(args, train_tokens=train_tokens)
        logger.info(f"Replaying {cache.tokens:,} cached tokens for {args.train_tokens / cache.tokens:.3g} epoch(s).")
        buffer = CacheReplay(
            cache, sae_args.harvested_hookpoints(), micro, seed=args.seed, rank=rank, world_size=world
        )
    else:
        chunks = _activation_source(accelerator, model, tokenizer, sae_args, lm_args, data_args, autocast_dtype)
        # No larger than this process's share of the run: a short run must not harvest more than it trains on first.
        capacity = min(args.shuffle_buffer_tokens, args.train_tokens // world)
        depth = args.prefetch_chunks if args.prefetch_chunks is not None else 2 * (accelerator.device.type == "cuda")
        buffer = ShufflingBuffer(lambda skip: prefetch(chunks(skip), depth), micro, capacity, seed=args.seed + rank,
                                 max_tokens=args.num_steps * args.batch_size // world)  # fmt: skip
    trainer = SaeTrainer(args, saes, buffer, accelerator, owners, learning_rates=rates)
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
                "learning_rate": trainer.learning_rates.get(name, args.learning_rate),
                "train_tokens": trainer.state.tokens,
                "train_seconds": round(seconds, 1),
            }
            if cache is not None:
                run["train_epochs"] = round(trainer.state.tokens / cache.tokens, 4)
            report[name] = {**run, **held_out.get(name, {}), **dead[name]}
        _write_or_rescue(lambda out: _save_runs(runs, trained, report, out, groups), Path(args.output_dir),
                         "The trained SAEs")  # fmt: skip
    accelerator.wait_for_everyone()
    if accelerator.is_main_process and report:
        trainer.log_report(report, histograms)
    trainer.end()  # last: the trackers and the process group end after every collective
    return report


def _write_or_rescue(write: Callable[[Path], object], target: Path, what: str) -> None:
    """`write(target)`, and where `target` cannot take it, `write` into a new temporary folder that the error names:
    hours of computation are never lost to a full disk or a changed permission."""
    try:
        write(target)
    except OSError as error:
        rescue = Path(tempfile.mkdtemp(prefix="hf_sae-unsaved-"))
        write(rescue)
        raise WriteError(
            f"{what} could not be saved to {target} ({error}). They were saved to {rescue} instead: move them where "
            f"they belong. What was in {target} before is intact."
        ) from error


def _save_runs(runs: list[SweepRun], trained: dict, report: dict, out: Path, groups: tuple) -> None:
    """Each configuration's SAEs, metrics and arguments: in `out` itself without a sweep, else each in
    `out/<name>`, with every SAE's metrics and the sweep's arguments in `out` too."""
    settings = {key: value for group in groups for key, value in dataclasses.asdict(group).items()}
    for run in runs:
        names = {h: name for name in trained if (h := trained[name].config.hookpoint) and run.sae_name(h) == name}
        folder = out if run.name is None else out / run.name
        save_saes({h: trained[name] for h, name in names.items()}, folder,
                  metrics={h: sae_metrics(report[name]) for h, name in names.items()})  # fmt: skip
        if run.name is not None:  # what reproduces this configuration alone
            write_json(folder / METRICS, {h: report[name] for h, name in names.items()})
            sae_settings = dataclasses.asdict(run.sae_args) | {"learning_rate": run.learning_rate}
            write_json(folder / TRAINING_ARGS, settings | sae_settings | {"output_dir": str(folder)})
    write_json(out / METRICS, report)
    write_json(out / TRAINING_ARGS, settings)


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


def check_against_lm_config(lm_args: ActivationArguments, hookpoints: list[str], context_size: int | None = None):
    """Hookpoints and context size checked against the LM's config and module tree, before its weights load."""
    skeleton = model_skeleton(lm_args.model_name_or_path)
    if skeleton is not None:
        resolve_hookpoints(skeleton, hookpoints)  # unknown names fail here, listing the closest
        if context_size is not None:
            check_context_size(context_size, _max_positions(skeleton))


def _max_positions(model) -> int | None:
    return getattr(model.config, "max_position_embeddings", None)


def activation_widths(model, hookpoints: list[str], pairs: dict[str, str | None] | None = None) -> dict[str, int]:
    """Each hookpoint's activation width, from one stopped forward on two blocks of two tokens; each transcoder's
    two hookpoints of `pairs` (`{input: output}`) must hold the same tokens."""
    probe = torch.zeros(2, 2, dtype=torch.long, device=model.device)
    with torch.no_grad():
        shapes = {h: acts.shape for h, acts in capture_activations(model, hookpoints, probe).items()}
    for source, target in (pairs or {}).items():
        if target is not None and shapes[source][:-1] != shapes[target][:-1]:
            raise ArgumentError(
                f"A transcoder from `{source}` to `{target}` needs one activation per token at both, but on 2 blocks "
                f"of 2 tokens `{source}` gives shape {tuple(shapes[source])} and `{target}` {tuple(shapes[target])}. "
                "Pick two hookpoints that carry hidden states of the same tokens, e.g. an MLP's `.input` and the MLP."
            )
    return {h: shape[-1] for h, shape in shapes.items()}


def _activation_source(
    accelerator, model, tokenizer, sae_args, lm_args, data_args, autocast_dtype
) -> Callable[[int], Iterator[Chunk]]:
    """`skip -> Iterator[Chunk]` over this process's share of the text, live from the LM."""
    world, rank = accelerator.num_processes, accelerator.process_index
    max_positions = _max_positions(model)
    with accelerator.main_process_first():  # tokenise once; the other processes reuse datasets' cache
        blocks = load_token_blocks(data_args, tokenizer, max_positions=max_positions, rank=rank, world_size=world)
    excluded, lm_batch = special_token_ids(tokenizer), lm_args.lm_batch_size
    hookpoints = sae_args.harvested_hookpoints()  # the SAEs' inputs and the transcoders' targets

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

    return live


# ---- cache ----------------------------------------------------------------------------------------------------------


def write_activation_cache(lm_args: ActivationArguments, data_args: DataArguments, args: CacheArguments) -> Path:
    """`hf-sae cache`: harvest `args.cache_tokens` tokens of activations at `args.hookpoints` into `args.output_dir`,
    for any number of later training runs (`--activation_cache`)."""
    check_all(lm_args, data_args, args)
    check_against_lm_config(lm_args, args.hookpoints, data_args.context_size)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tokenizer = _load_lm(lm_args, device)
    model.requires_grad_(False)
    resolve_hookpoints(model, args.hookpoints)
    autocast_dtype = resolve_lm_dtype(lm_args.lm_dtype, model.device)
    return _write_cache(model, tokenizer, lm_args, data_args, args, autocast_dtype)


def _write_cache(model, tokenizer, lm_args, data_args, args: CacheArguments, autocast_dtype) -> Path:
    blocks = load_token_blocks(data_args, tokenizer, max_positions=_max_positions(model))
    records = harvest_records(
        model,
        args.hookpoints,
        block_batches(blocks, lm_args.lm_batch_size, data_args.source_column),
        exclude_token_ids=special_token_ids(tokenizer),
        outlier_factor=lm_args.outlier_factor,
        autocast_dtype=autocast_dtype,
    )
    bar = tqdm(total=args.cache_tokens, unit="tok", desc=f"caching activations to {args.output_dir}")
    metadata = {"model": model_identity(lm_args.model_name_or_path), "lm": dataclasses.asdict(lm_args),
                "data": dataclasses.asdict(data_args)}  # fmt: skip
    path = write_cache(_counting(records, bar), args.output_dir, max_tokens=args.cache_tokens,
                       dtype=args.cache_dtype, metadata=metadata)  # fmt: skip
    bar.close()
    return path


def _counting(records, bar):
    # The last record is cut to the cache's size by write_cache, so the bar stops at its total.
    for activations, provenance in records:
        bar.update(min(next(iter(activations.values())).shape[0], bar.total - bar.n))
        yield activations, provenance


def _open_cache(args: SaeTrainingArguments, lm_args: ActivationArguments, hookpoints: list[str]):
    """The run's existing activation cache, checked against its model and hookpoints; None when there is none yet."""
    if not args.activation_cache or not Path(args.activation_cache).exists():
        return None
    cache = ActivationCache(args.activation_cache)
    cache.check_run(model_identity(lm_args.model_name_or_path), hookpoints)
    return cache


def model_identity(name_or_path: str | None) -> str:
    """What a cache records as its model, and a run must match: the built-in name, a local folder's full path, or
    the Hub id."""
    name = builtin_name(name_or_path) or DEFAULT_MODEL
    return str(Path(name).resolve()) if Path(name).exists() else name


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
    read_at: str | None = None,
):
    """`(saes, model, tokenizer)`: SAEs by hookpoint from a local folder (a training run's too: only its SAE
    folders count, not its checkpoints or logs) or a Hub repo, and their LM, by default their base model (the
    built-in offline copy when that is the built-in model's Hub id). The SAEs' hookpoints (or `read_at`, where
    they are read elsewhere) must be modules of that LM, checked before its weights load."""
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
    lm_args = dataclasses.replace(lm_args, model_name_or_path=name)
    sites = [h for n, sae in saes.items() for h in (sae.config.hookpoint or n, sae.config.output_hookpoint) if h]
    check_against_lm_config(lm_args, [read_at] if read_at else sites)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")  # the GPU where there is one
    model, tokenizer = _load_lm(lm_args, device)
    model.requires_grad_(False)
    return {h: sae.to(model.device).eval() for h, sae in saes.items()}, model, tokenizer


# ---- eval -----------------------------------------------------------------------------------------------------------


def run_evaluation(lm_args: ActivationArguments, data_args: DataArguments, args: EvaluationArguments) -> dict:
    """Load the SAEs, their LM and the text, evaluate, and write the report and plots to `args.output_dir`."""
    check_all(lm_args, data_args, args)
    probe_writable(Path(args.output_dir), "output_dir")
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
    settings = [dataclasses.asdict(group) for group in (lm_args, data_args, args)]
    settings = {k: v for group in settings for k, v in group.items()} | {"model": model.name_or_path}
    _write_or_rescue(lambda out: _write_eval_report(report, settings, out, args.dense_threshold),
                     Path(args.output_dir), "The evaluation report and its plots")  # fmt: skip
    for name, metrics in report.items():
        if args.save_beside_saes:
            beside = Path(saes[name].name_or_path) / METRICS
            existing = read_json(beside) if beside.is_file() else {}
            write_json(beside, existing | sae_metrics(metrics))
    logger.info(f"Evaluation report written to {Path(args.output_dir) / EVAL_REPORT}")
    return report


def _write_eval_report(report: dict, settings: dict, out: Path, dense_threshold: float) -> None:
    write_json(out / EVAL_REPORT, report)
    write_json(out / "eval_args.json", settings)
    for name, metrics in report.items():
        plot_firing_density(metrics, out / f"firing_density_{name}.png", title=name, threshold=dense_threshold)


# ---- features -------------------------------------------------------------------------------------------------------


def run_features(lm_args: ActivationArguments, data_args: DataArguments, args: FeatureArguments) -> FeatureMetadata:
    """`hf-sae features`: collect and save `<sae>/features/`, keeping the labels people set on an earlier run."""
    check_all(lm_args, data_args, args)
    probe_writable(Path(args.sae), "sae")  # features/ goes inside
    sae, model, tokenizer = load_sae_and_lm(args.sae, lm_args, device=args.device, read_at=args.hookpoint)
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
    if (folder / LABELS).is_file() or (folder / EXPLANATIONS).is_file():  # what people and explainers wrote stays
        earlier = FeatureMetadata.load(folder)
        features.labels = earlier.labels
        features.save_explanations(earlier.explanations)  # in memory until saved below
    _write_or_rescue(features.save_pretrained, folder, "The feature statistics")
    return features


def load_sae_and_lm(sae_dir: str, lm_args: ActivationArguments, *, device: str | None = None,
                    read_at: str | None = None):  # fmt: skip
    """`(sae, model, tokenizer)` for one SAE folder, as `load_saes_and_lm`."""
    path = Path(sae_dir).expanduser()
    if not path.is_dir():
        raise ArgumentError(f"--sae must be a local SAE folder (config.json, model.safetensors); got {sae_dir!r}.")
    saes, model, tokenizer = load_saes_and_lm(str(path), None, lm_args, device=device, read_at=read_at)
    if len(saes) != 1:
        raise ArgumentError(f"{sae_dir} holds {len(saes)} SAEs ({list(saes)}); pass the folder of one of them.")
    return next(iter(saes.values())), model, tokenizer
