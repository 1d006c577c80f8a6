"""The activation stream an SAE trainer consumes.

    token blocks -> frozen LM (`lm_forward`: no_grad, stopped after the deepest hookpoint, bf16 where faster)
                 -> {hookpoint: (tokens, d_in)} of the tokens that count (`lm_forward.counted_tokens`)
                 -> a shuffling buffer that mixes many contexts before serving fixed-size batches

Every stage is a plain iterator of `{hookpoint: Tensor}` chunks. A run can instead replay activations cached on
disk (`activation_cache`).
The buffer's state (chunks consumed, unserved activations, RNG) can be saved and restored, so a resumed run sees
exactly the activations the interrupted run would have seen next.
"""

import contextlib
import queue
import threading
from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import Tensor
from transformers import PreTrainedModel
from transformers.utils import logging

from .errors import DataError
from .lm_forward import counted_tokens, run_lm

logger = logging.get_logger(__name__)

Chunk = dict[str, Tensor]  # {hookpoint: (tokens, d_in)}, the same tokens in the same order for every hookpoint


def batched(blocks: Iterable[Tensor], size: int) -> Iterator[Tensor]:
    """Stack consecutive (context_size,) blocks into (size, context_size) batches; the last may be smaller."""
    batch: list[Tensor] = []
    for block in blocks:
        batch.append(block)
        if len(batch) == size:
            yield torch.stack(batch)
            batch = []
    if batch:
        yield torch.stack(batch)


def harvest(
    model: PreTrainedModel,
    hookpoints: Sequence[str],
    token_batches: Iterable[Tensor],
    *,
    exclude_token_ids: Tensor,
    outlier_factor: float | None = 10.0,
    autocast_dtype: torch.dtype | None = None,
) -> Iterator[Chunk]:
    """Run the frozen LM on (batch, context) token batches and yield one chunk of counted activations per batch:
    the tokens `lm_forward.counted_tokens` keeps at every hookpoint, so all hookpoints see the same tokens."""
    for input_ids in token_batches:
        input_ids = input_ids.to(model.device)
        activations, _ = run_lm(model, hookpoints, input_ids, autocast_dtype=autocast_dtype)
        keep, _ = counted_tokens(input_ids, activations.values(), exclude_token_ids, outlier_factor)
        yield {hookpoint: activations[hookpoint][keep] for hookpoint in hookpoints}  # (tokens, d_in) each


class ShufflingBuffer:
    """Mix activations from many contexts in a pool of `capacity` tokens that is refilled as it serves: each batch
    is drawn uniformly at random from the pool and its places are taken by freshly harvested tokens, so harvesting
    proceeds in steady chunks (about `batch_size` tokens per batch) instead of stop-the-world refills.

    While the pool fills, each batch served takes in two batches' worth, so the first batch comes after two batches
    of harvesting and the pool is full after `capacity / batch_size` batches. With `max_tokens` (the tokens the run
    will train on) the source stops once that many tokens are in, and the pool drains: nothing is harvested that
    is not served. A `capacity` of 0 turns mixing off (batches in the source's order).

    `chunks` is a callable `skip -> Iterator[Chunk]` that starts the source after `skip` chunks, so that a restored
    buffer resumes the source exactly where the saved one stopped; `on_status(text)`, when given, hears what the
    buffer is doing (a progress bar shows it).
    """

    def __init__(self, chunks, batch_size: int, capacity: int, *, seed: int = 0, max_tokens: int | None = None,
                 on_status=None):  # fmt: skip
        self.shuffle = capacity > 0  # 0 serves activations in order, e.g. to compare runs batch for batch
        if self.shuffle and capacity < 2 * batch_size:
            capacity = 2 * batch_size  # a batch must be a sample of the pool, not all of it
            logger.info(f"Shuffle buffer raised to {capacity} tokens, two batches.")
        self.chunks, self.batch_size, self.capacity, self.max_tokens = chunks, batch_size, capacity, max_tokens
        self.generator = torch.Generator().manual_seed(seed)
        self.chunks_consumed = 0
        self.tokens_in = 0  # tokens taken from the source so far
        self.batches_served = 0
        self.pool: Chunk = {}  # {hookpoint: (room, d_in)} storage; rows [0, size) hold unserved activations
        self.size = 0
        self.on_status, self.reported = on_status, ""

    def __iter__(self) -> Iterator[Chunk]:
        source = self.chunks(self.chunks_consumed)
        try:
            while True:
                self._fill(source)
                if self._budget_in() and hasattr(source, "close"):
                    source.close()  # nothing more is wanted: a prefetching thread stops now, not at the end
                if self.size < self.batch_size:
                    return  # the source ran dry (or the budget is in); what is left is less than one batch
                self.batches_served += 1
                yield self._take()
        finally:
            if hasattr(source, "close"):
                source.close()  # stops a prefetching thread

    def status(self) -> str:
        """What the buffer is doing, in words."""
        if self.batches_served == 0 and self.size < self._target():
            return f"harvesting the first batch ({self.size:,} of {self._target():,} tokens)"
        if self._budget_in():
            return "training, draining the buffer"
        if self._target() < self.capacity:
            return f"training, filling the buffer ({self.size:,} of {self.capacity:,} tokens)"
        return "training"

    def _target(self) -> int:
        """Tokens the pool must hold before the next batch is drawn from it."""
        if not self.shuffle:
            return self.batch_size
        return min(self.capacity, self.batch_size * (self.batches_served + 2))

    def _budget_in(self) -> bool:
        return self.max_tokens is not None and self.tokens_in >= self.max_tokens

    def _fill(self, source: Iterator[Chunk]) -> None:
        while self.size < self._target() and not self._budget_in():
            chunk = next(source, None)
            if chunk is None:
                break
            self.chunks_consumed += 1
            n = next(iter(chunk.values())).shape[0]
            for h, acts in chunk.items():
                self._room(h, acts, self.size + n)[self.size : self.size + n] = acts
            self.size += n
            self.tokens_in += n
            if self.on_status is not None and (status := self.status()) != self.reported:
                self.on_status(status)
                self.reported = status

    def _room(self, h: str, like: Tensor, rows: int) -> Tensor:
        """The storage of hookpoint `h`, grown to at least `rows` rows (to the capacity plus a chunk, once)."""
        storage = self.pool.get(h)
        if storage is None or storage.shape[0] < rows or storage.device != like.device:
            grown = like.new_empty((max(rows, self.capacity + like.shape[0]), *like.shape[1:]))
            if storage is not None:
                grown[: self.size] = storage[: self.size]
            self.pool[h] = storage = grown
        return storage

    def _take(self) -> Chunk:
        """One batch out of the pool: a uniform random sample (in order without mixing); the rows at the end that
        were not drawn move into the holes, so the pool stays contiguous."""
        n, b = self.size, self.batch_size
        if not self.shuffle:
            batch = {h: storage[:b].clone() for h, storage in self.pool.items()}
            for storage in self.pool.values():
                storage[: n - b] = storage[b:n].clone()
        else:
            drawn = torch.randperm(n, generator=self.generator)[:b]
            taken = torch.zeros(n, dtype=torch.bool)
            taken[drawn] = True
            holes, movers = drawn[drawn < n - b], torch.arange(n - b, n)[~taken[n - b :]]
            device = next(iter(self.pool.values())).device
            drawn, holes, movers = drawn.to(device), holes.to(device), movers.to(device)
            batch = {h: storage[drawn] for h, storage in self.pool.items()}
            for storage in self.pool.values():
                storage[holes] = storage[movers]
        self.size = n - b
        return batch

    def state_dict(self) -> dict:
        return {
            "format": "pool",
            "chunks_consumed": self.chunks_consumed,
            "tokens_in": self.tokens_in,
            "batches_served": self.batches_served,
            "pool": {h: storage[: self.size].cpu() for h, storage in self.pool.items()},
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("format") != "pool":
            raise DataError(
                "This checkpoint's buffer state was written by an older hf_sae, whose buffer refilled in large "
                "chunks; it cannot be resumed exactly. Start the run afresh, or resume with the hf_sae that wrote it."
            )
        self.chunks_consumed, self.tokens_in = state["chunks_consumed"], state["tokens_in"]
        self.batches_served = state["batches_served"]
        self.pool = {h: rows.clone() for h, rows in state["pool"].items()}
        self.size = next(iter(self.pool.values())).shape[0] if self.pool else 0
        self.generator.set_state(state["generator"])


def prefetch(chunks: Iterator[Chunk], depth: int) -> Iterator[Chunk]:
    """`chunks`, computed up to `depth` ahead on a background thread, so that harvesting overlaps the SAE step.

    On a GPU the thread runs its own CUDA stream and the consumer waits on an event per chunk; the order of the chunks
    is unchanged, so a run yields the same batches with or without prefetching. `depth` 0 returns `chunks` as is.
    """
    if depth <= 0:
        return chunks
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    thread = threading.Thread(target=_produce, args=(chunks, ready, stop), daemon=True, name="hf_sae-harvest")
    thread.start()
    return _consume(ready, stop, thread)


def _produce(chunks: Iterator[Chunk], ready: queue.Queue, stop: threading.Event) -> None:
    stream = torch.cuda.Stream() if torch.cuda.is_available() else None
    try:
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            for chunk in chunks:
                event = None
                if stream is not None:
                    event = torch.cuda.Event()
                    event.record(stream)
                while not stop.is_set():
                    try:
                        ready.put((chunk, event), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        item = None  # the source ran dry
    except BaseException as error:  # noqa: BLE001 - re-raised in the consumer, where the trainer can see it
        item = error
    while not stop.is_set():
        try:
            ready.put(item, timeout=0.1)
            return
        except queue.Full:
            continue


def _consume(ready: queue.Queue, stop: threading.Event, thread: threading.Thread) -> Iterator[Chunk]:
    try:
        while (item := ready.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            chunk, event = item
            if event is not None:  # the chunk was written on the harvest stream: order this stream after it
                current = torch.cuda.current_stream()
                current.wait_event(event)
                for acts in chunk.values():
                    acts.record_stream(current)  # its memory is not reused before this stream is done with it
            yield chunk
    finally:
        stop.set()
        thread.join()
