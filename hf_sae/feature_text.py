"""Which text `hf-sae features` describes. By default the held-out text: the split the SAE's training run left out,
read by the rule of training's held-out report (`evaluation.HELD_OUT_SPLIT`, and `data`'s carving of a source that
has no such split), so that frequencies, labels and scores describe text the SAE was not fitted to."""

import dataclasses
from pathlib import Path

from transformers.utils import logging

from .arguments import DataArguments
from .data import split_label
from .evaluation import HELD_OUT_SPLIT
from .layout import METRICS, read_json

logger = logging.get_logger(__name__)

TRAINING_SPLIT = DataArguments.dataset_split  # what --dataset_split reads when it is not named


def features_text(data_args: DataArguments, held_out: bool, sae_dir: str | Path) -> tuple[DataArguments, dict]:
    """`(the text to read, what to record of it)`: with `held_out`, the held-out split in place of the default
    `train` (a split named with --dataset_split is read as named). The record names the split as the training
    report does (`split`), whether it is held out, and the split the training run evaluated on, where its
    metrics.json says."""
    if held_out and data_args.dataset_split == TRAINING_SPLIT:
        data_args = dataclasses.replace(data_args, dataset_split=HELD_OUT_SPLIT)
    split = ", ".join(dict.fromkeys(split_label(name, data_args) for name in data_args.dataset_names))
    metrics = Path(sae_dir).expanduser() / METRICS
    trained = read_json(metrics).get("eval_split") if metrics.is_file() else None
    is_held_out = data_args.dataset_split != TRAINING_SPLIT
    sources = ", ".join(name or "the built-in corpus" for name in data_args.dataset_names)
    kind = "held-out text, which training did not read" if is_held_out else "TRAINING text"
    logger.info(f"Describing the features on {sources}: {split} ({kind}).")
    if is_held_out and trained is not None and trained != split:
        logger.warning(f"The training run evaluated on {trained!r}; these statistics read {split!r}.")
    return data_args, {"split": split, "held_out": is_held_out, "training_eval_split": trained}
