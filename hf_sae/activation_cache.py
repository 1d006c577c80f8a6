"""Harvest once, train many: LM activations written to disk in 16 bits and replayed for many SAEs and epochs.

```
<cache>/cache.json            what the cache holds: the model, each hookpoint's width, the dtype, the token count,
                              a checksum of each record batch, and the text and settings it came from
<cache>/activations.arrow     an Arrow IPC stream (the file format of `datasets`: `Dataset.from_file` opens it) of
                              large record batches, one row per counted token: one column per hookpoint (the bf16
                              or fp16 values' bits as a fixed-size list of int16) and the row's provenance,
                              `block` (the block's index in the run's block order), `position` (in the block),
                              `token_id`, and the block's `source` when the text names its sources
```

Writing converts whole LM batches at once (no Python per row). Reading memory-maps the file: the columns are
zero-copy views of the mapped record batches, and `CacheReplay` serves batches from a fresh random permutation of
all rows every epoch, so each row is seen once per epoch and a run may go on for several.

Opening a cache checks cache.json against the data before anything trains on it: the Arrow stream's schema carries
the identity it was written with (format, dtype, model, hookpoints and widths), and every record batch must match
its checksum, so an edited label, another model's cache relabelled, or altered values are refused, not trained on.

"""

import json
import math
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
import xxhash  # a dependency of datasets
from torch import Tensor
from transformers.utils import logging

from .errors import ArgumentError, DataError, HfSaeError, WriteError
from .layout import (
    claim_folder,
    read_json,
    refuse_if_no_space,
    replace_folder,
    staging_folder,
    write_failure,
    write_json,
)
from .lm_forward import counted_tokens, run_lm
from .offline.builtin_models import DEFAULT_MODEL, builtin_name
from .precision import cache_dtype

logger = logging.get_logger(__name__)

CACHE_META, CACHE_DATA = "cache.json", "activations.arrow"
PROVENANCE = ("block", "position", "token_id")
RECORD_BATCH_TOKENS = 65_536  # rows per Arrow record batch: few enough batches that replay gathers from few chunks
FORMAT_VERSION = 2  # 2: the identity in the stream's schema, a checksum per record batch
IDENTITY = ("format_version", "dtype", "model", "hookpoints")  # what cache.json and the stream must agree on
HEADER_KEY = b"hf_sae.cache"  # the schema metadata key of the identity
MAX_EPOCHS = 10  # passes over one cache that --train_tokens may imply before a run is refused (--allow_many_epochs)

Record = tuple[dict[str, Tensor], dict[str, np.ndarray | list]]  # ({hookpoint: (n, d_in)}, {provenance: (n,)})


def block_batches(blocks, lm_batch_size: int, source_column: str | None) -> Iterator[tuple[Tensor, list | None]]:
    """`(input_ids (batch, context), sources or None)` LM batches of a block dataset, a whole batch at a time."""
    for batch in blocks.iter(batch_size=lm_batch_size):
        sources = batch.get(source_column) if source_column else None
        yield torch.tensor(batch["input_ids"], dtype=torch.long), sources


def harvest_records(
    model,
    hookpoints: Sequence[str],
    batches: Iterable[tuple[Tensor, list[str] | None]],
    *,
    exclude_token_ids: Tensor,
    outlier_factor: float | None,
    autocast_dtype: torch.dtype | None,
) -> Iterator[Record]:
    """The counted activations (`lm_forward.counted_tokens`) of each `(input_ids (batch, seq), sources)` LM batch,
    with where each came from; `block` counts blocks from the first batch."""
    first_block = 0
    for input_ids, sources in batches:
        input_ids = input_ids.to(model.device)
        activations, _ = run_lm(model, hookpoints, input_ids, autocast_dtype=autocast_dtype)
        keep, _ = counted_tokens(input_ids, activations.values(), exclude_token_ids, outlier_factor)
        rows, positions = keep.nonzero(as_tuple=True)  # row-major: the order of `acts[keep]`
        provenance = {
            "block": (rows + first_block).cpu().numpy(),
            "position": positions.cpu().numpy().astype(np.int32),
            "token_id": input_ids[keep].cpu().numpy(),
        }
        if sources is not None:
            provenance["source"] = np.asarray(sources, dtype=object)[rows.cpu().numpy()]
        first_block += input_ids.shape[0]
        yield {h: activations[h][keep] for h in hookpoints}, provenance


def write_cache(
    records: Iterable[Record],
    path: str | Path,
    *,
    max_tokens: int,
    dtype: str = "bfloat16",
    metadata: dict | None = None,
) -> Path:
    """Write the first `max_tokens` rows of `records` to a cache folder at `path`, atomically (a reader, or a run
    killed half-way, never sees part of one) and claimed (another writer of `path` is refused, not replaced).
    `metadata` (the model, the text's settings) goes into cache.json."""
    torch_dtype = cache_dtype(dtype)
    path, written, writer, checksums = Path(path), 0, None, []
    with (
        claim_folder(path, "The activation cache"),
        staging_folder(path) as tmp,
        _explaining_write_failures(tmp / CACHE_DATA, path),
    ):
        try:
            for pending in _record_groups(records, max_tokens, torch_dtype):
                batch = _record_batch(pending)
                if writer is None:  # the row size is known from the first batch: the whole cache's size with it
                    need = max_tokens * batch.nbytes // batch.num_rows
                    refuse_if_no_space(tmp, need, f"A {max_tokens:,}-token cache")
                    widths = {h: batch.schema.field(h).type.list_size for h in pending[0][0]}
                    identity = {"format_version": FORMAT_VERSION, "dtype": dtype,
                                "model": (metadata or {}).get("model"), "hookpoints": widths}  # fmt: skip
                    schema = batch.schema.with_metadata({HEADER_KEY: json.dumps(identity)})
                    writer = pa.ipc.new_stream(str(tmp / CACHE_DATA), schema)
                writer.write_batch(batch)
                checksums.append(batch_checksum(batch))
                written += batch.num_rows
        except BaseException:
            if writer is not None:  # or the half-written file stays open after its folder is removed
                with suppress(OSError):
                    writer.close()
            raise
        if writer is None:
            raise DataError("The text produced no activations to cache; check the dataset and context size.")
        writer.close()
        meta = {"format_version": FORMAT_VERSION, "tokens": written, "dtype": dtype, "hookpoints": widths,
                "checksums": checksums}  # fmt: skip
        write_json(tmp / CACHE_META, meta | (metadata or {}))
        replace_folder(tmp, path)
    if written < max_tokens:
        logger.warning(f"The text ran out after {written:,} of {max_tokens:,} tokens; the cache holds {written:,}.")
    return path


def batch_checksum(batch: pa.RecordBatch) -> str:
    """xxh3-64 of a record batch's values, column by column: what is written is what replay reads back."""
    digest = xxhash.xxh3_64()
    for name, column in zip(batch.schema.names, batch.columns):
        digest.update(name.encode())
        if pa.types.is_fixed_size_list(column.type):
            column = column.flatten()
        if pa.types.is_string(column.type):  # the source names: their offsets from 0, and their bytes
            _, offsets, data = column.buffers()
            offsets = np.frombuffer(offsets, np.int32)[column.offset : column.offset + len(column) + 1]
            digest.update(offsets - offsets[0])
            digest.update(memoryview(data or b"")[offsets[0] : offsets[-1]])
        else:
            digest.update(np.ascontiguousarray(column.to_numpy(zero_copy_only=False)))
    return digest.hexdigest()


@contextmanager
def _explaining_write_failures(file: Path, target: Path) -> Iterator[None]:
    try:
        yield
    except OSError as error:  # pyarrow reports a full disk as an OSError naming no file
        if isinstance(error, HfSaeError):
            raise
        raise WriteError(
            f"Writing the activation cache: {write_failure(error, file)}. The temporary folder was removed; nothing "
            f"at {target} was changed."
        ) from error


def _record_groups(records: Iterable[Record], max_tokens: int, dtype: torch.dtype) -> Iterator[list[Record]]:
    """The first `max_tokens` rows of `records`, as 16-bit bits, in groups of about RECORD_BATCH_TOKENS rows."""
    pending, pending_rows, written = [], 0, 0
    for activations, provenance in records:
        rows = min(next(iter(activations.values())).shape[0], max_tokens - written)
        part = {h: _bits(acts[:rows], dtype) for h, acts in activations.items()}
        pending.append((part, {key: value[:rows] for key, value in provenance.items()}))
        written, pending_rows = written + rows, pending_rows + rows
        if pending_rows >= RECORD_BATCH_TOKENS:
            yield pending
            pending, pending_rows = [], 0
        if written >= max_tokens:
            break
    if pending_rows:
        yield pending


def _bits(acts: Tensor, dtype: torch.dtype) -> np.ndarray:
    """(n, d_in) int16: the bits of `acts` in 16-bit `dtype`, which Arrow and numpy cannot name (bf16)."""
    return acts.detach().to(dtype).cpu().contiguous().view(torch.int16).numpy()


def _record_batch(parts: list[Record]) -> pa.RecordBatch:
    columns = {}
    for name in parts[0][0]:
        values = np.concatenate([acts[name] for acts, _ in parts])  # (n, d_in)
        columns[name] = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])
    for key in parts[0][1]:  # the provenance; `source` is an object array of strings
        values = np.concatenate([prov[key] for _, prov in parts])
        columns[key] = pa.array(values, pa.string() if values.dtype == object else None)
    return pa.RecordBatch.from_pydict(columns)


class ActivationCache:
    """A cache folder opened for reading: `cache.meta` (cache.json), and its columns as memory-mapped tensors."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not (self.path / CACHE_META).is_file() or not (self.path / CACHE_DATA).is_file():
            raise DataError(
                f"{self.path} is not an activation cache (expected {CACHE_META} and {CACHE_DATA} in it). Write one "
                f"with `hf-sae cache --output_dir {self.path}`, or point --activation_cache at one."
            )
        self.meta = read_json(self.path / CACHE_META)
        if self.meta.get("format_version") != FORMAT_VERSION:
            raise DataError(
                f"{self.path} is a cache of format {self.meta.get('format_version')}, this hf_sae reads format "
                f"{FORMAT_VERSION}. Write it again with `hf-sae cache`."
            )
        try:
            self.table = pa.ipc.open_stream(pa.memory_map(str(self.path / CACHE_DATA))).read_all()  # zero-copy
        except (pa.ArrowException, OSError) as error:
            raise self._damaged(f"{CACHE_DATA} cannot be read ({' '.join(str(error).split())})") from None
        self._check_header()
        self.tokens, self.dtype = self.table.num_rows, cache_dtype(self.meta["dtype"])
        self.widths: dict[str, int] = self.meta["hookpoints"]
        sizes = [len(chunk) for chunk in self.table.column(PROVENANCE[0]).chunks]
        self.offsets = torch.tensor([0, *np.cumsum(sizes)])  # (chunks + 1,) first row of each record batch
        self._columns: dict[str, list[Tensor]] = {}

    def _damaged(self, what: str) -> DataError:
        return DataError(
            f"Activation cache {self.path} is damaged: {what}. Nothing was trained on it; write it again with "
            f"`hf-sae cache --output_dir {self.path} --overwrite` (its settings are in {CACHE_META})."
        )

    def _check_header(self) -> None:
        """cache.json against the stream: the identity the stream was written with, each hookpoint's column, the
        token count, and every record batch's checksum (one pass over the file, before any training)."""
        written = _written_identity(self.table.schema)
        for key in IDENTITY:
            if self.meta.get(key) != written.get(key):
                raise self._damaged(
                    f"{CACHE_META} says {key} {self.meta.get(key)!r}, but {CACHE_DATA} was written with "
                    f"{written.get(key)!r} (was {CACHE_META} edited, or copied from another cache?)"
                )
        if self.meta.get("tokens") != self.table.num_rows:
            raise self._damaged(f"{CACHE_META} says {self.meta.get('tokens')!r} tokens, {CACHE_DATA} holds "
                                f"{self.table.num_rows:,}")  # fmt: skip
        for hookpoint, width in written["hookpoints"].items():
            kind = self.table.schema.field(hookpoint).type if hookpoint in self.table.schema.names else None
            if kind != pa.list_(pa.int16(), width):
                raise self._damaged(f"its column {hookpoint!r} is {kind}, not {width} 16-bit values a row")
        batches, checksums = self.table.to_batches(), self.meta.get("checksums")
        if not isinstance(checksums, list) or len(checksums) != len(batches):
            raise self._damaged(f"{CACHE_META} has {len(checksums) if isinstance(checksums, list) else 'no'} record "
                                f"batch checksums for {len(batches)} record batches")  # fmt: skip
        first = 0
        for number, (batch, checksum) in enumerate(zip(batches, checksums)):
            if batch_checksum(batch) != checksum:
                raise self._damaged(
                    f"record batch {number} (rows {first:,} to {first + batch.num_rows - 1:,}) does not match its "
                    "checksum: its values were altered after it was written"
                )
            first += batch.num_rows

    def check_run(self, model: str, hookpoints: Sequence[str], widths: dict[str, int] | None = None) -> None:
        """Refuse to train from activations of another model, other hookpoints, or other widths."""
        if self.meta.get("model") != model:
            raise DataError(
                f"Activation cache {self.path} holds activations of model {self.meta.get('model')!r}, but this run "
                f"uses {model!r}. Pass --model_name_or_path {self.meta.get('model')}, or another cache."
            )
        if missing := [h for h in hookpoints if h not in self.widths]:
            raise DataError(
                f"Activation cache {self.path} holds hookpoints {list(self.widths)}, not {missing}. Train on those, "
                f"or write a cache with `hf-sae cache --hookpoints {' '.join(hookpoints)}`."
            )
        for hookpoint, width in (widths or {}).items():
            if self.widths[hookpoint] != width:
                raise DataError(
                    f"Activation cache {self.path} has d_in {self.widths[hookpoint]} at {hookpoint!r}; the model's "
                    f"activation there has width {width}. The cache comes from another model: write it again."
                )

    def column(self, hookpoint: str) -> list[Tensor]:
        """The record batches of `hookpoint` as (rows, d_in) tensors of the cache's dtype, views of the mapped file."""
        if hookpoint not in self._columns:
            width = self.widths[hookpoint]
            with warnings.catch_warnings():  # read-only views of the file: replay never writes to them
                warnings.simplefilter("ignore", UserWarning)
                self._columns[hookpoint] = [
                    torch.from_numpy(chunk.flatten().to_numpy(zero_copy_only=True)).view(self.dtype).view(-1, width)
                    for chunk in self.table.column(hookpoint).chunks
                ]
        return self._columns[hookpoint]

    def gather(self, hookpoint: str, rows: Tensor) -> Tensor:
        """(len(rows), d_in) activations of `rows` (indices into the whole cache), in that order."""
        chunks, index = self.column(hookpoint), torch.searchsorted(self.offsets, rows, right=True) - 1
        out = torch.empty(len(rows), self.widths[hookpoint], dtype=self.dtype)
        for chunk in index.unique().tolist():
            where = (index == chunk).nonzero(as_tuple=True)[0]
            out[where] = chunks[chunk].index_select(0, rows[where] - self.offsets[chunk])
        return out

    def provenance(self) -> dict[str, list]:
        """Every row's `block`, `position`, `token_id` (and `source`), as Python lists (for inspection, not replay)."""
        return {
            name: self.table.column(name).to_pylist() for name in self.table.column_names if name not in self.widths
        }


def _written_identity(schema: pa.Schema) -> dict:
    """The identity a cache's stream was written with (`IDENTITY`), {} where it names none."""
    try:
        written = json.loads(schema.metadata[HEADER_KEY])
    except (KeyError, TypeError, ValueError):
        return {}
    return written if isinstance(written, dict) and isinstance(written.get("hookpoints"), dict) else {}


class CacheReplay:
    """Serve `batch_size`-token batches of `hookpoints` from a cache, epoch after epoch, each epoch a fresh random
    permutation of every row (the same on every process, which each take their own `batch_size` slice of every
    `world_size * batch_size` tokens), so that every row is served exactly once per epoch over all processes.

    Iteration and `state_dict` as `activations.ShufflingBuffer`, so the trainer takes either."""

    def __init__(self, cache: ActivationCache, hookpoints: Sequence[str], batch_size: int, *, seed: int = 0,
                 rank: int = 0, world_size: int = 1, shuffle: bool = True):  # fmt: skip
        self.cache, self.hookpoints, self.batch_size = cache, list(hookpoints), batch_size
        self.seed, self.rank, self.world_size, self.shuffle = seed, rank, world_size, shuffle
        self.rounds = 0  # rounds of world_size batches served
        self._order: tuple[int, Tensor] | None = None

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        while True:
            start = (self.rounds * self.world_size + self.rank) * self.batch_size  # in the endless stream of epochs
            rows = self.stream_rows(start, self.batch_size)
            self.rounds += 1
            yield {h: self.cache.gather(h, rows) for h in self.hookpoints}

    def stream_rows(self, start: int, count: int) -> Tensor:
        """The cache rows at positions [start, start + count) of the stream: epoch e is positions [e N, (e+1) N)."""
        parts, tokens = [], self.cache.tokens
        while count:
            epoch, offset = divmod(start, tokens)
            take = min(count, tokens - offset)
            parts.append(self.epoch_order(epoch)[offset : offset + take])
            start, count = start + take, count - take
        return torch.cat(parts)

    def epoch_order(self, epoch: int) -> Tensor:
        if self._order is None or self._order[0] != epoch:
            if self.shuffle:
                generator = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
                order = torch.randperm(self.cache.tokens, generator=generator)
            else:
                order = torch.arange(self.cache.tokens)
            self._order = (epoch, order)
        return self._order[1]

    def state_dict(self) -> dict:
        return {"rounds": self.rounds}

    def load_state_dict(self, state: dict) -> None:
        self.rounds = int(state["rounds"])


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's order, unrelated for every (seed, epoch) pair. `seed + epoch` would replay seed 0's
    second epoch as seed 1's first, so that two runs of a sweep over seeds would share orders."""
    return int(np.random.SeedSequence([seed % 2**64, epoch]).generate_state(1, np.uint64)[0])


def replay_tokens(cache: ActivationCache, train_tokens: int, epochs: float | None, batch_size: int,
                  allow_many_epochs: bool = False) -> int:  # fmt: skip
    """The run's token budget over a cache, said in the log: `epochs` times the cache (whole batches), else
    `train_tokens`, which may exceed the cache (replay then goes round again) up to MAX_EPOCHS passes. More passes
    implied by `train_tokens` are refused unless `allow_many_epochs`; an explicit `epochs` asks for them already."""
    if epochs is None:
        tokens = train_tokens
        if tokens > MAX_EPOCHS * cache.tokens and not allow_many_epochs:
            raise _too_many_epochs(cache, tokens)
    else:
        tokens = math.floor(epochs * cache.tokens / batch_size) * batch_size
        if tokens < batch_size:
            raise ArgumentError(
                f"--epochs {epochs} of the {cache.tokens:,}-token cache {cache.path} is less than one batch of "
                f"{batch_size}; raise --epochs or lower --batch_size."
            )
    logger.info(f"Training for {tokens / cache.tokens:.3g} epochs of the {cache.tokens:,}-token cache ({tokens:,} "
                "tokens).")  # fmt: skip
    return tokens


def _too_many_epochs(cache: ActivationCache, tokens: int) -> ArgumentError:
    epochs = f"{tokens / cache.tokens:.2f}"  # two decimals: 10.001 passes must not read as 10
    return ArgumentError(
        f"--train_tokens {tokens:,} over the {cache.tokens:,}-token activation cache {cache.path} is "
        f"{epochs} epochs, more than {MAX_EPOCHS}: the SAEs would see the same tokens that many "
        f"times and fit them rather than the LM. Write a bigger cache (`hf-sae cache --cache_tokens "
        f"{math.ceil(tokens / MAX_EPOCHS)} --output_dir NEW_DIR`, then --activation_cache NEW_DIR), or pass "
        f"--allow_many_epochs to train for {epochs} epochs anyway."
    )


def model_identity(name_or_path: str | None) -> str:
    """What a cache records as its model, and a run must match: the built-in name, a local folder's full path, or
    the Hub id."""
    name = builtin_name(name_or_path) or DEFAULT_MODEL
    return str(Path(name).resolve()) if Path(name).exists() else name


# ---- one writer per folder ------------------------------------------------------------------------------------------
