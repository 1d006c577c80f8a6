"""The activation stream an SAE trainer consumes.

    token blocks -> frozen LM (`lm_forward`: no_grad, stopped after the deepest hookpoint, bf16 where faster)
                 -> {hookpoint: (tokens, d_in)} of the tokens that count (`lm_forward.counted_tokens`)
                 -> a shuffling buffer that mixes many contexts before serving fixed-size batches

Every stage is a plain iterator of `{hookpoint: Tensor}` chunks. A run can instead replay activations cached on
disk (`activation_cache`).
The buffer's state (chunks consumed, unserved activations, RNG) can be saved and restored, so a resumed run sees
exactly the activations the interrupted run would have seen next.
"""

from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import Tensor
from transformers import PreTrainedModel
from transformers.utils import logging

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
    """Mix activations from many contexts: fill to `capacity` tokens, shuffle, serve half, refill (the mixing scheme
    of SAELens). A batch thus draws on about `capacity / tokens_per_chunk` chunks of text.

    A `capacity` of 0 turns shuffling off. `chunks` is a callable `skip -> Iterator[Chunk]` that starts the source
    after `skip` chunks, so that a restored buffer resumes the source exactly where the saved one stopped.
    """

    def __init__(self, chunks, batch_size: int, capacity: int, *, seed: int = 0, on_refill=None):
        """`on_refill(tokens_wanted)`, when given, is called as a refill starts (a progress bar says so)."""
        shuffle = capacity > 0  # 0 serves activations in order, e.g. to compare runs batch for batch
        if shuffle and capacity < 2 * batch_size:
            capacity = 2 * batch_size  # a smaller buffer could not keep half for mixing while serving a batch
            logger.info(f"Shuffle buffer raised to {capacity} tokens, two batches.")
        self.chunks, self.batch_size, self.capacity, self.shuffle = chunks, batch_size, capacity, shuffle
        self.generator = torch.Generator().manual_seed(seed)
        self.chunks_consumed = 0
        self.batches_due = 0  # batches to serve before the next refill
        self.pending: Chunk = {}  # unserved activations, in serving order once shuffled
        self.on_refill = on_refill

    def __iter__(self) -> Iterator[Chunk]:
        source = self.chunks(self.chunks_consumed)
        while True:
            if self.batches_due == 0 and not self._refill(source):
                return  # the source ran dry; what is left is less than one batch
            batch = {h: acts[: self.batch_size] for h, acts in self.pending.items()}
            self.pending = {h: acts[self.batch_size :] for h, acts in self.pending.items()}
            self.batches_due -= 1
            yield batch

    def _refill(self, source: Iterator[Chunk]) -> bool:
        exhausted, parts, size = False, [self.pending] if self.pending else [], self._size()
        if self.on_refill is not None:
            self.on_refill((self.capacity if self.shuffle else self.batch_size) - size)
        while size < (self.capacity if self.shuffle else self.batch_size):
            chunk = next(source, None)
            if chunk is None:
                exhausted = True
                break
            self.chunks_consumed += 1
            parts.append(chunk)
            size += next(iter(chunk.values())).shape[0]
        if len(parts) > 1:  # one concatenation per refill, not one per chunk
            self.pending = {h: torch.cat([part[h] for part in parts]) for h in parts[-1]}
        elif parts:  # a single chunk that fills the batch on its own
            self.pending = parts[0]
        if self._size() < self.batch_size:
            return False
        if self.shuffle:
            order = torch.randperm(self._size(), generator=self.generator)
            self.pending = {h: acts[order.to(acts.device)] for h, acts in self.pending.items()}
        servable = self._size() // 2 if self.shuffle and not exhausted else self._size()
        self.batches_due = max(servable // self.batch_size, 1)
        return True

    def _size(self) -> int:
        return next(iter(self.pending.values())).shape[0] if self.pending else 0

    def state_dict(self) -> dict:
        return {
            "chunks_consumed": self.chunks_consumed,
            "batches_due": self.batches_due,
            "pending": {h: acts.cpu() for h, acts in self.pending.items()},
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.chunks_consumed, self.batches_due = state["chunks_consumed"], state["batches_due"]
        self.pending = state["pending"]
        self.generator.set_state(state["generator"])
