"""A training run's token budgets, fixed before any training: how much text it reads (the default run: a little
text, cached once and replayed for several epochs), how far it replays an activation cache (the epochs this implies
are said, and too many refused, by `activation_cache.replay_tokens`), and how much held-out text its final report
reads (`SaeTrainingArguments.held_out_tokens`: by default a share of the training budget); and how much text
`hf-sae features` reads (by default as much as the SAE trained on, within bounds)."""

import dataclasses
import hashlib
import json
from pathlib import Path

from transformers.utils import logging

from .activation_cache import ActivationCache, model_identity, replay_tokens
from .arguments import DataArguments, FeatureArguments, LanguageModelArguments, SaeTrainingArguments
from .arguments.commands import FEATURE_TOKENS_CAP, FEATURE_TOKENS_FLOOR
from .arguments.train import (
    DEFAULT_RUN_EPOCHS,
    DEFAULT_RUN_TOKENS,
    DEFAULT_TRAIN_TOKENS,
    EVAL_FRACTION,
    EVAL_TOKENS_CAP,
)
from .layout import METRICS, TRAIN_TOKENS, read_json
from .offline import cache_dir

logger = logging.get_logger(__name__)


def default_run(args: SaeTrainingArguments, transcoder: bool) -> SaeTrainingArguments:
    """`args` with --train_tokens, --learning_rate and (for the default run of SAEs) --epochs resolved where they were
    not given, said in the log."""
    if args.train_tokens is not None:
        return args.with_learning_rate()
    if transcoder or args.activation_cache:  # a transcoder's cache holds two widths per layer; a given cache decides
        logger.info(f"Training on {DEFAULT_TRAIN_TOKENS:,} tokens (the default); --train_tokens sets it.")
        return dataclasses.replace(args.with_learning_rate(), train_tokens=DEFAULT_TRAIN_TOKENS)
    args = args.with_learning_rate(default_run=True)
    epochs = DEFAULT_RUN_EPOCHS if args.epochs is None else args.epochs
    logger.info(
        f"The default run: {DEFAULT_RUN_TOKENS:,} tokens of text, read once and trained on for {epochs:g} epochs "
        f"({epochs * DEFAULT_RUN_TOKENS:,.0f} tokens) at lr {args.learning_rate:g}, which beats one pass over fresh "
        "text at the same cost; --train_tokens N reads N tokens of fresh text instead, --epochs sets the passes."
    )
    return dataclasses.replace(args, train_tokens=DEFAULT_RUN_TOKENS, epochs=epochs)


def own_cache(args: SaeTrainingArguments, lm_args: LanguageModelArguments, data_args: DataArguments,
              hookpoints: list[str]) -> SaeTrainingArguments:  # fmt: skip
    """`args` reading its activations from a cache of its own where it trains more than one epoch without one: a
    folder of the hf_sae cache named by what it holds (model, LM reading, text, hookpoints, tokens), so that a
    resumed run, or a later one of another SAE on the same activations, replays it instead of reading the text
    again."""
    if args.activation_cache or args.epochs is None or args.epochs <= 1:
        return args
    what = {"model": model_identity(lm_args.model_name_or_path), "lm": dataclasses.asdict(lm_args),
            "data": dataclasses.asdict(data_args), "hookpoints": hookpoints, "tokens": args.train_tokens}  # fmt: skip
    digest = hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]
    folder = cache_dir("activations", f"{Path(what['model']).name}-{args.train_tokens}-{digest}")
    state = "replays the" if folder.exists() else "caches its"
    logger.info(f"The run {state} activations at {folder}; delete the folder when no run needs it any more.")
    return dataclasses.replace(args, activation_cache=str(folder))


def open_run_cache(args: SaeTrainingArguments, lm_args: LanguageModelArguments, hookpoints: list[str]):
    """The run's existing activation cache, checked against its model and hookpoints; None when there is none yet."""
    if not args.activation_cache or not Path(args.activation_cache).exists():
        return None
    cache = ActivationCache(args.activation_cache)
    cache.check_run(model_identity(lm_args.model_name_or_path), hookpoints)
    return cache


def replay_length(args: SaeTrainingArguments, cache: ActivationCache | None) -> SaeTrainingArguments:
    """A run over a cache trains for `--epochs` of it, else `--train_tokens` (whole batches either way)."""
    if cache is None:
        return args
    tokens = replay_tokens(cache, args.train_tokens, args.epochs, args.batch_size, args.allow_many_epochs)
    return dataclasses.replace(args, train_tokens=tokens)


def held_out_budget(
    args: SaeTrainingArguments, context_size: int, cache: ActivationCache | None
) -> SaeTrainingArguments:
    """`args` with `--eval_tokens` resolved (what the run records), said in the log when it follows the training
    budget: --train_tokens, times --epochs over a cache still to be written (`replay_length` has counted a
    written one's)."""
    pending = cache is None and args.activation_cache and args.epochs is not None
    tokens = args.held_out_tokens(context_size, round(args.train_tokens * (args.epochs if pending else 1)))
    if args.eval_tokens is None:
        logger.info(
            f"Evaluating on {tokens:,} held-out tokens ({EVAL_FRACTION:.0%} of the training budget, capped at "
            f"{EVAL_TOKENS_CAP // 1000}k); --eval_tokens sets it."
        )
    return dataclasses.replace(args, eval_tokens=tokens)


def feature_budget(args: FeatureArguments) -> FeatureArguments:
    """`args` with `--max_tokens` resolved: by default the SAE's recorded training budget, bounded, said in the log."""
    if args.max_tokens is not None:
        return args
    metrics = Path(args.sae).expanduser() / METRICS
    trained = read_json(metrics).get(TRAIN_TOKENS) if metrics.is_file() else None
    if not isinstance(trained, int) or isinstance(trained, bool):
        tokens, why = FEATURE_TOKENS_CAP, f"no training budget recorded in {metrics}"
    else:
        tokens = min(max(trained, FEATURE_TOKENS_FLOOR), FEATURE_TOKENS_CAP)
        bounds = f"at least {FEATURE_TOKENS_FLOOR // 1000}k, at most {FEATURE_TOKENS_CAP // 1000}k"
        why = f"the SAE trained on {trained:,}; {bounds}"
    logger.info(f"Describing features over {tokens:,} tokens ({why}); --max_tokens sets it.")
    return dataclasses.replace(args, max_tokens=tokens)
