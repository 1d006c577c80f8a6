"""A training run's token budgets, fixed before any training: how far it replays an activation cache (the epochs
this implies are said, and too many refused, by `activation_cache.replay_tokens`), and how much held-out text its
final report reads (`SaeTrainingArguments.held_out_tokens`: by default a share of the training budget); and how much
text `hf-sae features` reads (by default as much as the SAE trained on, within bounds)."""

import dataclasses
from pathlib import Path

from transformers.utils import logging

from .activation_cache import ActivationCache, replay_tokens
from .arguments import FeatureArguments, SaeTrainingArguments
from .arguments.commands import FEATURE_TOKENS_CAP, FEATURE_TOKENS_FLOOR
from .arguments.train import EVAL_FRACTION, EVAL_TOKENS_CAP
from .layout import METRICS, TRAIN_TOKENS, read_json

logger = logging.get_logger(__name__)


def replay_length(args: SaeTrainingArguments, cache: ActivationCache | None) -> SaeTrainingArguments:
    """A run over a cache trains for `--epochs` of it, else `--train_tokens` (whole batches either way)."""
    if cache is None:
        return args
    tokens = replay_tokens(cache, args.train_tokens, args.epochs, args.batch_size, args.allow_many_epochs)
    return dataclasses.replace(args, train_tokens=tokens)


def held_out_budget(args: SaeTrainingArguments, context_size: int) -> SaeTrainingArguments:
    """`args` with `--eval_tokens` resolved (what the run records), said in the log when it follows the training
    budget."""
    tokens = args.held_out_tokens(context_size)
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
