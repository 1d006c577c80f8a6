"""From arguments to files: what the `hf-sae` commands run. The argument groups checked their values as they were
built; a runner checks what needs the disk or the LM's config, then loads the LM (and the SAEs, whose base model is
the default LM) and the text, does its work and writes its results through `layout` and `hub.save_saes`.

    train_saes              train      SAEs or transcoders on live or cached activations, with a held-out report
    write_activation_cache  cache      activations of some hookpoints, for many later runs
    run_evaluation          eval       metrics and plots, and metrics.json beside the SAEs
    run_features            features   feature statistics into <sae>/features
    explain_text            features --explain: which features fire on a text
    run_explain             explain    an LLM's explanation of each feature, scored
    space_target            push --space: the SAE that the Space explores
    run_pull                pull       SAEs from the Hub, into its cache or a folder
    run_convert             convert    SAEs from any known format into another
"""

import dataclasses
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from pathlib import Path

import torch
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers.utils import logging

from .activation_cache import (
    ActivationCache,
    CacheReplay,
    block_batches,
    harvest_records,
    model_identity,
    write_cache,
)
from .activations import Chunk, ShufflingBuffer, batched, harvest, prefetch
from .arguments import (
    CacheArguments,
    ConvertArguments,
    DataArguments,
    EvaluationArguments,
    ExplainArguments,
    FeatureArguments,
    LanguageModelArguments,
    PullArguments,
    PushArguments,
    SaeArguments,
    SaeTrainingArguments,
    check_batch_division,
    settings_of,
)
from .autointerp import ExplainSettings, explain_features, load_chat, require_contexts, shuffled_control
from .budgets import default_run, feature_budget, held_out_budget, open_run_cache, own_cache, replay_length
from .circuit_runners import convert_transcoders
from .clt_feature_runs import is_clt_folder, run_clt_features
from .clt_runs import CLT_NAME, new_clt, plan_clt, save_trained
from .convert import export_sae, sparsify_folder_name
from .cpu_memory import keep_freed_memory
from .data import (
    check_context_size,
    check_sources,
    iter_blocks,
    load_token_blocks,
    read_blocks,
    skip_blocks,
    split_label,
)
from .distribution import hookpoint_owners
from .errors import ArgumentError, HfSaeError, TrainingError, WriteError
from .evaluation import HeldOut, evaluate_saes, held_out_report, load_held_out, log_per_source, plot_firing_density
from .feature_shards import FeatureShards, new_shard, planned_shard
from .feature_store import FeatureMetadata, load_features
from .feature_text import features_text
from .features import collect_feature_metadata, explain
from .hookpoints import resolve_hookpoints
from .hub import load_saes, save_saes
from .layout import (
    CONFIG,
    EVAL_REPORT,
    FEATURES,
    add_metrics,
    claim_folder,
    find_sae_folders,
    hookpoint_folder,
    probe_writable,
    read_json,
    write_json,
)
from .lm_forward import LmReading, activation_widths, special_token_ids
from .memory import check_fits_in_memory
from .modeling_clt import CltModel
from .modeling_sae import SaeModel
from .models import check_against_lm_config, load_lm, load_sae_and_lm, load_saes_and_lm, max_positions
from .run_folders import check_output_dir, clear_output_dir
from .schedules import Schedule
from .sharded_training import check_feature_sharding, trainer_class
from .sweeps import SweepRun, sweep_runs, tracked_runs
from .training import SaeTrainer, make_accelerator

logger = logging.get_logger(__name__)


# ---- train ----------------------------------------------------------------------------------------------------------


def train_saes(
    sae_args: SaeArguments | None = None,
    lm_args: LanguageModelArguments | None = None,
    data_args: DataArguments | None = None,
    train_args: SaeTrainingArguments | None = None,
) -> dict:
    """Train one SAE per hookpoint (or, with `--clt`, one cross-layer transcoder over many layers), save them in
    `train_args.output_dir`, and return the metrics report.

    Example:

    ```python
    >>> report = train_saes(train_args=SaeTrainingArguments(train_tokens=200_000, output_dir="out"))
    >>> report["model.layers.15"]["fvu"]
    ```
    """
    sae_args, lm_args = sae_args or SaeArguments(), lm_args or LanguageModelArguments()
    data_args, args = data_args or DataArguments(), train_args or SaeTrainingArguments()
    args = default_run(args, sae_args.clt)  # the budget, said in the log
    check_sources(data_args)
    keep_freed_memory()  # every step's large tensors would fault in afresh otherwise
    runs = sweep_runs(sae_args, args.learning_rate)  # every sweep entry checked before anything expensive
    check_feature_sharding(sae_args, args, lm_args, runs)  # latent counts from the LM's config
    check_output_dir(args)
    probe_writable(Path(args.output_dir), "output_dir")  # not after hours of training
    clt = plan_clt(sae_args, args, lm_args) if sae_args.clt else None  # from the LM's config, before it loads
    pairs = sae_args.hookpoint_pairs() if clt is None else dict(zip(clt.hookpoints, clt.output_hookpoints))
    harvested = list(dict.fromkeys([*pairs, *(out for out in pairs.values() if out)]))  # inputs, then targets
    check_against_lm_config(lm_args, harvested, data_args.context_size)
    args = own_cache(args, lm_args, data_args, harvested)  # epochs without a cache: the run's text cached once
    cache = open_run_cache(args, lm_args, harvested)  # an existing cache must match this run
    args = held_out_budget(replay_length(args, cache), data_args.context_size, cache)  # said in the log
    accelerator = make_accelerator(args)
    world, rank = accelerator.num_processes, accelerator.process_index
    check_batch_division(args.batch_size, world, args.gradient_accumulation_steps)  # as launched, not as asked
    logger.info(f"Process {rank} of {world} on {accelerator.device} ({accelerator.distributed_type}).")
    if args.distribute_hookpoints and any(pairs.values()):
        raise ArgumentError(
            "--distribute_hookpoints sends each hookpoint's activations to one owner, but a transcoder needs two "
            f"({ {h: o for h, o in pairs.items() if o} }). Drop --distribute_hookpoints to train transcoders."
        )
    owners = hookpoint_owners(list(pairs), world) if args.distribute_hookpoints else None
    set_seed(args.seed)
    reading = lm_args.reading(accelerator.device)
    model, tokenizer = load_lm(lm_args, reading.device)
    resolve_hookpoints(model, harvested)  # unknown names fail here, listing the closest
    check_context_size(data_args.context_size, max_positions(model))
    with accelerator.main_process_first():  # every process, so that none trains where the main one refuses
        held_out = load_held_out(tokenizer, data_args, args.eval_tokens)  # no block: refused now, not after training
    widths = activation_widths(model, harvested, pairs)
    if cache is not None:
        cache.check_run(model_identity(lm_args.model_name_or_path), harvested, widths)
    own = [h for h in pairs if owners is None or owners[h] == rank]  # this process's SAEs
    if sae_args.clt:  # planned again with the loaded LM's config and name (a GGUF has no config before it loads)
        clt = plan_clt(sae_args, args, lm_args, model)
        saes, rates = {CLT_NAME: new_clt(clt, args, accelerator)}, {CLT_NAME: args.learning_rate}
    else:
        saes, rates = _new_saes(runs, own, pairs, widths, model.name_or_path, args.seed, accelerator.device,
                                planned_shard(args.shard_features, rank))  # fmt: skip
    logger.info(f"Process {rank} of {world} trains the SAEs of {own}: {list(saes)}.")
    if args.activation_cache and cache is None:  # written now from the text by one process, then replayed by all
        with accelerator.main_process_first():  # the others wait (up to --ddp_timeout), then open it
            if accelerator.is_main_process:
                with claim_folder(args.activation_cache, "--activation_cache"):
                    _write_cache(model, tokenizer, reading, lm_args, data_args,
                                 CacheArguments(args.activation_cache, harvested, args.train_tokens))  # fmt: skip
        args = replay_length(args, cache := ActivationCache(args.activation_cache))
    buffer = _activation_stream(args, cache, accelerator, model, tokenizer, harvested, reading, data_args)
    trainer = trainer_class(args)(args, saes, buffer, accelerator, owners, learning_rates=rates)
    trainer.hparams = settings_of(sae_args, lm_args, data_args, args)
    trainer.tracked_runs = tracked_runs(runs, list(saes) if sae_args.clt else list(pairs), trainer.hparams)
    # One run per output folder: the main process holds it while anything is written there (checkpoints, SAEs).
    with claim_folder(args.output_dir, "--output_dir") if accelerator.is_main_process else nullcontext():
        check_output_dir(args)  # again, now that no other run can start writing there
        if accelerator.is_main_process:  # the checks have passed: an overwritten run's files go now
            clear_output_dir(args)
        return _train_and_save(trainer, runs, cache, model, tokenizer, reading, data_args, held_out)


def _train_and_save(trainer: SaeTrainer, runs: list[SweepRun], cache, model, tokenizer, reading, data_args,
                    held_out: HeldOut | None) -> dict:  # fmt: skip
    """Train, save every SAE with its training metrics at once (on the main process), then evaluate them on the
    held-out text and save them again with those metrics: what fails after training never loses the SAEs."""
    args, accelerator, output_dir = trainer.args, trainer.accelerator, Path(trainer.args.output_dir)
    start = time.perf_counter()
    trained = trainer.train()
    seconds = time.perf_counter() - start
    dead = trainer.dead_fractions()  # a collective-free read of the trainer's state, on every rank
    report, histograms, failure = {}, {}, None
    if accelerator.is_main_process:
        runs_of = {name: {"architecture": sae.config.architecture, "num_latents": sae.config.num_latents,
                          "k": sae.config.k, "learning_rate": trainer.learning_rates.get(name, args.learning_rate),
                          "train_tokens": trainer.state.tokens, "train_seconds": round(seconds, 1)}
                   for name, sae in trained.items()}  # fmt: skip
        if cache is not None:
            for run in runs_of.values():
                run["train_epochs"] = round(trainer.state.tokens / cache.tokens, 4)
        report, saved = {name: {**run, **dead[name]} for name, run in runs_of.items()}, False
        try:  # the SAEs first, with their training metrics; the held-out report and its card after them
            _write_or_rescue(lambda out: save_trained(runs, trained, report, out, trainer.hparams), output_dir,
                             "The trained SAEs")  # fmt: skip
            saved = True
            held, histograms = held_out_report(model, tokenizer, trained, reading, data_args, held_out)
            report = {name: {**run, **held.get(name, {}), **dead[name]} for name, run in runs_of.items()}
            save_trained(runs, trained, report, output_dir, trainer.hparams)
        except Exception as error:  # raised once every process has finished its part
            rescued = isinstance(error, WriteError) and not saved  # saved elsewhere, and it says where
            failure = error if rescued else _after_saving(error, trained, output_dir, saved)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process and report and failure is None:
        trainer.log_report(report, histograms)
    trainer.end()  # last: the trackers and the process group end after every collective
    if failure is not None:
        raise failure
    return report


def _after_saving(error: Exception, trained: dict[str, SaeModel], output_dir: Path, saved: bool) -> Exception:
    """`error` (of its own class where it is hf_sae's), saying first where the trained SAEs are safe: in
    `output_dir`, or, where saving them there failed, alone (weights and configs) in a new temporary folder."""
    where = f"were saved to {output_dir} with their training metrics (`hf-sae eval --sae {output_dir}` measures them)"
    if not saved:
        rescue = Path(tempfile.mkdtemp(prefix="hf_sae-unsaved-"))
        for name, sae in trained.items():
            sae.save_pretrained(rescue / name, **({} if isinstance(sae, CltModel) else {"model_card": False}))
        where = f"could not be saved to {output_dir}; they were saved alone (weights and configs) to {rescue}"
    failure_class = type(error) if isinstance(error, HfSaeError) else TrainingError
    failure = failure_class(f"The trained SAEs {where}. What failed: {type(error).__name__}: {error}")
    failure.__cause__ = error
    return failure


def _new_saes(runs: list[SweepRun], hookpoints: list[str], pairs: dict, widths: dict, base_model: str, seed: int,
              device, shards: FeatureShards) -> tuple[dict[str, SaeModel], dict[str, float]]:  # fmt: skip
    """`({name: SAE}, {name: learning rate})` of every configuration at each of `hookpoints`, refused before they
    are allocated when they cannot fit (with feature `shards`, only this process's rows of each are built). Each SAE
    is initialised from its own seed, so that its initial weights do not depend on which other SAEs this process
    builds (with distributed hookpoints, each builds only its own)."""
    configs = {run.sae_name(h): run.sae_args.config(h, widths[h], base_model, pairs[h], widths.get(pairs[h]))
               for h in hookpoints for run in runs}  # fmt: skip
    for config in configs.values():  # the exact width is known now
        check_fits_in_memory(config.num_latents, config.d_in, len(configs), str(device), shards.count)
    saes, rates, index = {}, {}, {h: i for i, h in enumerate(pairs)}
    for h in hookpoints:
        for number, run in enumerate(runs):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed + index[h] * len(runs) + number)
                saes[run.sae_name(h)] = new_shard(configs[run.sae_name(h)], shards, run.sae_name(h)).to(device)
            rates[run.sae_name(h)] = run.learning_rate
    return saes, rates


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


def _activation_stream(args: SaeTrainingArguments, cache: ActivationCache | None, accelerator, model, tokenizer,
                       hookpoints: list[str], reading: LmReading, data_args: DataArguments):  # fmt: skip
    """This process's micro-batches of `{hookpoint: (tokens, d_in)}`: replayed from the cache, or harvested live
    from its share of the text and mixed in a shuffling buffer."""
    world, rank = accelerator.num_processes, accelerator.process_index
    micro = args.batch_size // (world * args.gradient_accumulation_steps)
    if cache is not None:
        return CacheReplay(cache, hookpoints, micro, seed=args.seed, rank=rank, world_size=world)
    with accelerator.main_process_first():  # tokenise once; the other processes reuse datasets' cache
        blocks = load_token_blocks(data_args, tokenizer, max_positions=max_positions(model), rank=rank,
                                   world_size=world)  # fmt: skip
    excluded = special_token_ids(tokenizer)
    depth = args.prefetch_chunks if args.prefetch_chunks is not None else 2 * (accelerator.device.type == "cuda")

    def chunks(skip: int) -> Iterator[Chunk]:  # `skip` LM batches in: where a resumed run goes on
        batches = batched(iter_blocks(skip_blocks(blocks, skip * reading.batch_size)), reading.batch_size)
        return prefetch(harvest(model, hookpoints, batches, exclude_token_ids=excluded, **reading.keywords), depth)

    # No larger than this process's share of the run: a short run must not harvest more than it trains on first.
    capacity = min(args.shuffle_buffer_tokens, args.train_tokens // world)
    return ShufflingBuffer(chunks, micro, capacity, seed=args.seed + rank,
                           max_tokens=Schedule(args).num_steps * args.batch_size // world)  # fmt: skip


# ---- cache ----------------------------------------------------------------------------------------------------------


def write_activation_cache(lm_args: LanguageModelArguments, data_args: DataArguments, args: CacheArguments) -> Path:
    """`hf-sae cache`: harvest `args.cache_tokens` tokens of activations at `args.hookpoints` into `args.output_dir`,
    for any number of later training runs (`--activation_cache`)."""
    check_sources(data_args)
    check_against_lm_config(lm_args, args.hookpoints, data_args.context_size)
    with claim_folder(args.output_dir, "--output_dir"):  # held until the cache is in place
        args.check()  # "a new folder" again, now that no other writer can create it before this one ends
        reading = lm_args.reading()
        model, tokenizer = load_lm(lm_args, reading.device)
        resolve_hookpoints(model, args.hookpoints)
        return _write_cache(model, tokenizer, reading, lm_args, data_args, args)


def _write_cache(model, tokenizer, reading: LmReading, lm_args, data_args: DataArguments, args: CacheArguments):
    blocks = load_token_blocks(data_args, tokenizer, max_positions=max_positions(model))
    batches = block_batches(blocks, reading.batch_size, data_args.source_column)
    excluded = special_token_ids(tokenizer)
    records = harvest_records(model, args.hookpoints, batches, exclude_token_ids=excluded, **reading.keywords)
    metadata = {"model": model_identity(lm_args.model_name_or_path), "lm": dataclasses.asdict(lm_args),
                "data": dataclasses.asdict(data_args)}  # fmt: skip
    bar = tqdm(total=args.cache_tokens, unit="tok", desc=f"caching activations to {args.output_dir}")
    path = write_cache(_counting(records, bar), args.output_dir, max_tokens=args.cache_tokens,
                       dtype=args.cache_dtype, metadata=metadata)  # fmt: skip
    bar.close()
    return path


def _counting(records, bar):
    # The last record is cut to the cache's size by write_cache, so the bar stops at its total.
    for activations, provenance in records:
        bar.update(min(next(iter(activations.values())).shape[0], bar.total - bar.n))
        yield activations, provenance


# ---- eval, features -------------------------------------------------------------------------------------------------


def run_evaluation(lm_args: LanguageModelArguments, data_args: DataArguments, args: EvaluationArguments) -> dict:
    """Load the SAEs, their LM and the text, evaluate, and write the report and plots to `args.output_dir`."""
    check_sources(data_args)
    probe_writable(Path(args.output_dir), "output_dir")
    saes, model, tokenizer = load_saes_and_lm(
        args.sae, args.hookpoints, lm_args, revision=args.revision, device=args.device
    )
    reading = lm_args.reading(model.device)
    blocks = load_token_blocks(data_args, tokenizer, max_positions=max_positions(model))
    input_ids, sources = read_blocks(blocks, args.eval_tokens, data_args.source_column)
    report = evaluate_saes(model, saes, input_ids, exclude_token_ids=tokenizer.all_special_ids,
                           max_tokens=args.eval_tokens, batch_size=reading.batch_size, lm_metrics=args.lm_metrics,
                           dense_threshold=args.dense_threshold, sources=sources, **reading.keywords)  # fmt: skip
    log_per_source(report)
    label = ", ".join(dict.fromkeys(split_label(name, data_args) for name in data_args.dataset_names))
    logger.info(f"Evaluated on {label} of {', '.join(map(str, data_args.dataset_names))}.")
    report = {name: {"eval_split": label, **metrics} for name, metrics in report.items()}
    settings = settings_of(lm_args, data_args, args) | {"model": model.name_or_path}
    _write_or_rescue(lambda out: _write_eval_report(report, settings, out, args.dense_threshold),
                     Path(args.output_dir), "The evaluation report and its plots")  # fmt: skip
    for name, metrics in report.items():
        if args.save_beside_saes:
            add_metrics(Path(saes[name].name_or_path), metrics)
    logger.info(f"Evaluation report written to {Path(args.output_dir) / EVAL_REPORT}")
    return report


def _write_eval_report(report: dict, settings: dict, out: Path, dense_threshold: float) -> None:
    write_json(out / EVAL_REPORT, report)
    write_json(out / "eval_args.json", settings)
    for name, metrics in report.items():
        plot_firing_density(metrics, out / f"firing_density_{name}.png", title=name, threshold=dense_threshold)


def run_features(lm_args: LanguageModelArguments, data_args: DataArguments, args: FeatureArguments) -> FeatureMetadata:
    """`hf-sae features`: collect and save `<sae>/features/`, keeping the labels people set on an earlier run."""
    data_args, text = features_text(data_args, args.held_out, args.sae)  # the held-out text by default
    check_sources(data_args)
    _refuse_a_folder_of_saes(args.sae)
    probe_writable(Path(args.sae), "sae")  # features/ goes inside
    with claim_folder(Path(args.sae) / FEATURES, "--sae's features folder"):  # held until the statistics are in
        args.check()  # "no earlier statistics" again, now that no other run can write them before this one ends
        args = feature_budget(args)
        if is_clt_folder(args.sae):
            return run_clt_features(lm_args, data_args, args)
        return _collect_features(lm_args, data_args, args, text)


def _refuse_a_folder_of_saes(sae: str) -> None:
    """Statistics go into one SAE's folder, where its loaders look; a run's folder holds one folder per SAE."""
    folders, single = find_sae_folders(Path(sae).expanduser())
    if folders and not single:
        listed = " ".join(f"--sae {folder}" for folder in folders.values())
        raise ArgumentError(
            f"--sae {sae} is a folder of SAE folders ({', '.join(folders)}); statistics saved there would be read by "
            f"no loader. Collect them for each SAE in its own folder: {listed}."
        )


def _collect_features(lm_args: LanguageModelArguments, data_args: DataArguments, args: FeatureArguments, text: dict):
    sae, model, tokenizer = load_sae_and_lm(args.sae, lm_args, device=args.device, read_at=args.hookpoint)
    reading = lm_args.reading(model.device)
    blocks = load_token_blocks(data_args, tokenizer, max_positions=max_positions(model))
    features = collect_feature_metadata(
        model, tokenizer, sae, batched(iter_blocks(blocks), reading.batch_size), hookpoint=args.hookpoint,
        max_tokens=args.max_tokens, top_n=args.top_n, before=args.context_before, after=args.context_after,
        sample_size=args.sample_size, skip_after_special=args.skip_after_special,
        settings={"data": dataclasses.asdict(data_args), "text": text}, **reading.keywords,
    )  # fmt: skip
    features.keep_what_people_wrote(Path(args.sae) / FEATURES)  # labels people set and explanations stay
    _write_or_rescue(features.save_pretrained, Path(args.sae) / FEATURES, "The feature statistics")
    if (share := features.metadata["interpretability"]["clear_pattern_share"]) is not None:  # for the card and Hub
        add_metrics(Path(args.sae), {"clear_pattern_share": share})
    return features


def explain_text(lm_args: LanguageModelArguments, args: FeatureArguments) -> list[dict]:
    """`hf-sae features --explain TEXT`: per token of the text, the SAE's most active features with their labels."""
    sae, model, tokenizer = load_sae_and_lm(args.sae, lm_args, device=args.device, read_at=args.hookpoint)
    return explain(model, tokenizer, sae, args.explain, args.top, hookpoint=args.hookpoint)


def run_explain(args: ExplainArguments) -> tuple[dict[int, dict], dict | None]:
    """`hf-sae explain`: every check first (metadata, feature ids, the explainer), then explain, score and save;
    returns the features explained this run and the shuffled control's scores (with `--control`)."""
    features = load_features(Path(args.sae).expanduser())
    require_contexts(features)  # and an explanations.json that can be read, before the explainer loads
    if bad := [i for i in args.features or () if not 0 <= i < len(features)]:
        raise ArgumentError(f"--features must be feature ids in [0, {len(features)}); got {bad}.")
    chat = load_chat(args.explainer, args.explainer_endpoint, api_key=args.api_key, device=args.device)
    settings = ExplainSettings(args.explain_examples, args.score_examples, fuzzing=args.fuzzing, seed=args.seed)
    done = explain_features(features, chat, args.features, max_features=args.max_features, batch_size=args.batch_size,
                            settings=settings, overwrite=args.overwrite)  # fmt: skip
    if not args.control:
        return done, None
    indices = list(done) if args.features is None else args.features  # with --features: a stopped run's too
    return done, shuffled_control(features, chat, indices, batch_size=args.batch_size, settings=settings)


# ---- the Hub and other formats --------------------------------------------------------------------------------------


def space_target(args: PushArguments) -> tuple[str | None, str | None]:
    """(hookpoint, base model) of the SAE that `push --space` explores: the only one, or `--space_hookpoint`;
    checked before anything is uploaded."""
    folders, single = find_sae_folders(Path(args.sae))
    hookpoint = args.space_hookpoint
    if hookpoint is None and len(folders) > 1:
        raise ArgumentError(
            f"{args.sae} holds {len(folders)} SAEs ({list(folders)}); pick the Space's with --space_hookpoint."
        )
    if hookpoint is not None and hookpoint not in folders:
        raise ArgumentError(f"--space_hookpoint {hookpoint!r} is not one of the SAEs pushed: {list(folders)}.")
    folder = folders[hookpoint] if hookpoint else next(iter(folders.values()), None)
    base_model = read_json(folder / CONFIG).get("base_model_name_or_path") if folder else None
    return (None if single else hookpoint or next(iter(folders))), base_model


def run_pull(args: PullArguments) -> dict[str, SaeModel]:
    """`hf-sae pull`: the SAEs of `args.hookpoints` (all by default) from the Hub, also saved in `args.output_dir`
    when given, where SAEs of the same hookpoints are replaced only with `--overwrite`."""
    saes = load_saes(args.repo_id, args.hookpoints, revision=args.revision, token=args.token)
    if args.output_dir:
        out = Path(args.output_dir)
        there = set(find_sae_folders(out)[0]) if out.is_dir() else set()
        if (clash := sorted(there & set(saes))) and not args.overwrite:
            raise ArgumentError(
                f"--output_dir {args.output_dir} already holds SAEs for {clash}; they were left as they are (the "
                "download is in the Hub cache). Pass --overwrite to replace them, or choose another folder."
            )
        save_saes(saes, out)
    return saes


def run_convert(args: ConvertArguments) -> dict[str, Path]:
    """`hf-sae convert`: the SAEs of `args.src` (any known format: a folder, a Hub repo or a release name) written
    in format `args.to`: one SAE into `args.dst` itself, several into `dst/<hookpoint>` (sparsify: its own relative
    names, `layers.3`). Returns `{hookpoint: folder}`.

    Example:

    ```python
    >>> run_convert(ConvertArguments(src="release-or-folder", dst="out", to="saelens"))
    ```
    """
    if args.to == "circuit_tracer":  # a whole transcoder set or cross-layer transcoder, not SAEs one by one
        return convert_transcoders(args)
    dst = Path(args.dst)
    if dst.exists() and any(dst.iterdir()) and not args.overwrite:
        raise ArgumentError(f"{dst} exists and is not empty. Choose another destination, or pass --overwrite.")
    saes = load_saes(args.src, args.hookpoints, width=args.width, l0=args.l0, revision=args.revision,
                     token=args.token)  # fmt: skip
    name = (lambda h, sae: sparsify_folder_name(sae)) if args.to == "sparsify" else (lambda h, sae: h)
    one = len(saes) == 1  # one SAE into dst itself; several, each checked before anything is written, into subfolders
    folders = {h: dst if one else dst / hookpoint_folder(name(h, sae)) for h, sae in saes.items()}
    unit_norm = args.unit_norm_decoder
    return {h: export_sae(sae, folders[h], args.to, unit_norm_decoder=unit_norm) for h, sae in saes.items()}
