"""A training run's token budgets, fixed before any training: how far it replays an activation cache (the epochs
this implies are said, and too many refused, by `activation_cache.replay_tokens`), and how much held-out text its
final report reads (`SaeTrainingArguments.held_out_tokens`: by default a share of the training budget)."""

import dataclasses

from transformers.utils import logging

from .activation_cache import ActivationCache, replay_tokens
from .arguments import SaeTrainingArguments
from .arguments.train import EVAL_FRACTION, EVAL_TOKENS_CAP

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
