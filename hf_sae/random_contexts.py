"""Random contexts: a uniform sample of token windows from the text the feature statistics were collected over, each
with the features that fire anywhere in it. Scoring an explanation needs contexts where a feature is silent beside
those where it fires (the non-activating examples of detection scoring, Paulo et al. 2024, arXiv 2410.13928); they are
drawn from this sample, so that scoring needs neither the studied LM nor the text again.

    <sae_dir>/features/random_contexts.parquet   one row per window: block, position of its first token, token_ids,
                                                 tokens, and `fired`, the features active on any of its tokens
"""

import numpy as np
import pyarrow as pa
import torch
from torch import Tensor


class RandomContextSampler:
    r"""
    Keeps `size` windows of `length` tokens, a uniform sample over the blocks of a stream (reservoir sampling,
    Vitter's Algorithm R, with one window at a random offset per block, never at position 0, where the BOS sits).

    >>> sampler.update(sae.encode(acts), input_ids)  # (batch, seq, num_latents), (batch, seq)
    """

    def __init__(self, length: int, size: int = 512, seed: int = 0):
        self.length, self.size, self.blocks = length, size, 0
        self.generator = torch.Generator().manual_seed(seed)
        self.rows: dict[int, tuple[int, int, Tensor, Tensor]] = {}  # slot -> (block, position, token_ids, fired)

    def _draw(self, high: int) -> int:
        return int(torch.randint(high, (1,), generator=self.generator))

    @torch.no_grad()
    def update(self, latents: Tensor, input_ids: Tensor) -> None:
        """Offer one window of each block `input_ids` `(batch, seq)` with its latents `(batch, seq, num_latents)`."""
        batch, seq = input_ids.shape
        for b in range(batch):
            block, self.blocks = self.blocks, self.blocks + 1
            slot = block if block < self.size else self._draw(block + 1)
            if slot >= self.size or seq <= self.length:
                continue
            start = 1 + self._draw(seq - self.length)  # positions 1 .. seq - length
            fired = (latents[b, start : start + self.length] > 0).any(0).nonzero().squeeze(1)
            self.rows[slot] = (block, start, input_ids[b, start : start + self.length].cpu(), fired.int().cpu())

    def token_ids(self) -> Tensor:
        """Every token id in the sample, flat, to decode along with the other metadata's."""
        return torch.cat([row[2] for row in self.rows.values()]) if self.rows else torch.zeros(0, dtype=torch.long)

    def table(self, strings: dict[int, str]) -> pa.Table:
        """The sample as an Arrow table, in stream order; `strings` decodes each token id."""
        rows = sorted(self.rows.values(), key=lambda row: row[0])
        ids = [row[2].tolist() for row in rows]
        return pa.table(
            {
                "block": pa.array([row[0] for row in rows], pa.int64()),
                "position": pa.array([row[1] for row in rows], pa.int64()),
                "token_ids": pa.array(ids, pa.list_(pa.int32())),
                "tokens": pa.array([[strings[int(i)] for i in row] for row in ids], pa.list_(pa.string())),
                "fired": pa.array([row[3].numpy().astype(np.int32) for row in rows], pa.list_(pa.int32())),
            }
        )
