"""The activation stream: the mixing pool that refills as it serves, its exact resume, and background harvesting."""

import threading

import pytest
import torch

from hf_sae import DataError
from hf_sae.activations import ShufflingBuffer, prefetch


def numbered_chunks(count: int, tokens: int) -> list[dict[str, torch.Tensor]]:
    """Chunk i holds the values i * tokens ... (i + 1) * tokens - 1 at two hookpoints of different widths, so that a
    served value tells which chunk (block of text) it came from, and a mix-up between hookpoints shows."""
    chunks = []
    for i in range(count):
        values = torch.arange(i * tokens, (i + 1) * tokens, dtype=torch.float32)
        chunks.append({"a": values[:, None], "b": values[:, None].repeat(1, 3) * -1})
    return chunks


class CountingSource:
    """`skip -> iterator` over the chunks that records, for each chunk pulled, how many batches had been served."""

    def __init__(self, chunks):
        self.chunks, self.pulls, self.buffer = chunks, [], None

    def __call__(self, skip: int):
        for chunk in self.chunks[skip:]:
            self.pulls.append(self.buffer.batches_served if self.buffer else None)
            yield chunk


def serve_all(buffer) -> list[torch.Tensor]:
    batches = []
    for batch in buffer:
        assert torch.equal(batch["b"], batch["a"].repeat(1, 3) * -1)  # both hookpoints see the same tokens
        batches.append(batch["a"].flatten())
    return batches


def test_the_pool_serves_everything_once_mixed_and_harvests_in_steady_chunks():
    source = CountingSource(numbered_chunks(100, 64))
    buffer = ShufflingBuffer(source, batch_size=128, capacity=1024, seed=0)
    source.buffer = buffer
    batches, newest = [], []
    for batch in buffer:
        batches.append(batch["a"].flatten())
        newest.append(buffer.tokens_in // 64 - 1)  # the latest chunk in the pool when this batch was drawn
    values = torch.cat(batches)
    assert sorted(values.tolist()) == list(range(6400)) and len(batches) == 50  # every activation once
    # No stop-the-world refill: never more than two batches' worth (4 chunks) pulled between two batches served.
    pulls_per_gap = torch.bincount(torch.tensor(source.pulls))
    assert pulls_per_gap.max() == 4 and pulls_per_gap[0] == 4  # the first batch comes after two batches' worth
    # Mixed: once the pool is full (8 batches), each batch samples the 1,024-token pool of about 16 chunks: from
    # 128 tokens about 15 distinct chunks; served in order they would come from 2.
    chunks_per_batch = [len(set((batch // 64).long().tolist())) for batch in batches[8:40]]
    assert min(chunks_per_batch) >= 11 and sum(chunks_per_batch) / len(chunks_per_batch) > 13
    assert len(set((batches[0] // 64).long().tolist())) == 4  # the first batch already spans 4 chunks
    # Old tokens do not linger: a token stays for capacity / batch_size = 8 batches on average, 16 chunks.
    ages = torch.cat([latest - batch // 64 for latest, batch in zip(newest[8:40], batches[8:40])])
    assert 12 < ages.mean() < 20 and (ages > 80).sum() < 5


def test_the_pool_resumes_exactly_from_any_point_and_prefetching_changes_nothing():
    chunks = numbered_chunks(20, 10)

    def source(skip):
        return iter(chunks[skip:])

    reference = serve_all(ShufflingBuffer(source, batch_size=8, capacity=40, seed=0))
    assert torch.cat(reference).tolist() != list(range(200)) and len(reference) == 25
    for stop in (0, 1, 3, 7, 12, 24):  # while filling, full, and draining at the end
        first = ShufflingBuffer(source, batch_size=8, capacity=40, seed=0)
        iterator = iter(first)
        served = [next(iterator)["a"].flatten() for _ in range(stop)]
        state = first.state_dict()
        again = ShufflingBuffer(source, batch_size=8, capacity=40, seed=123)  # the seed comes from the state
        again.load_state_dict(state)
        assert all(torch.equal(a, b) for a, b in zip(served + serve_all(again), reference, strict=True)), stop
    threaded = ShufflingBuffer(lambda skip: prefetch(source(skip), 2), batch_size=8, capacity=40, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(serve_all(threaded), reference, strict=True))


def test_without_mixing_batches_come_in_the_source_order():
    chunks = numbered_chunks(7, 10)
    batches = serve_all(ShufflingBuffer(lambda skip: iter(chunks[skip:]), batch_size=16, capacity=0))
    assert torch.equal(torch.cat(batches), torch.arange(64, dtype=torch.float32))  # the last 6 make no batch


def test_a_token_budget_stops_harvesting_and_drains_the_pool():
    source = CountingSource(numbered_chunks(100, 10))
    statuses = []
    buffer = ShufflingBuffer(source, batch_size=8, capacity=40, seed=0, max_tokens=96, on_status=statuses.append)
    source.buffer = buffer
    values = torch.cat(serve_all(buffer))
    assert len(source.pulls) == 10 and buffer.tokens_in == 100  # harvested: the budget, to a whole chunk
    assert len(values) == 96 and len(set(values.tolist())) == 96 and values.max() < 100  # and all of it served
    filling = "training, filling the buffer ({} of 40 tokens)"
    assert statuses[:3] == ["harvesting the first batch (10 of 16 tokens)", filling.format(20), filling.format(22)]
    assert statuses[-1] == "training, draining the buffer" and "training" in statuses

    stopped = []

    def prefetched(skip):
        try:
            yield from prefetch(source(skip), 2)
        finally:
            stopped.append(buffer.batches_served)

    source.pulls, buffer = [], ShufflingBuffer(prefetched, batch_size=8, capacity=40, seed=0, max_tokens=96)
    source.buffer = buffer
    assert torch.equal(torch.cat(serve_all(buffer)), values)  # the same batches from the thread
    assert stopped == [7]  # harvesting stopped once the budget was in, not at the end of the run
    assert len(source.pulls) <= 10 + 2 + 1  # what the pool took, plus at most the queue and the chunk in hand


def test_a_buffer_state_of_the_old_format_is_refused_clearly():
    buffer = ShufflingBuffer(lambda skip: iter([]), batch_size=8, capacity=40)
    with pytest.raises(DataError, match="older hf_sae, whose buffer refilled in large chunks"):
        buffer.load_state_dict({"chunks_consumed": 3, "batches_due": 1, "pending": {}, "generator": None})


def test_prefetching_runs_ahead_on_a_thread_passes_errors_on_and_stops_when_closed():
    produced, release = [], threading.Event()

    def source():
        for i in range(100):
            produced.append((i, threading.current_thread().name))
            if i == 3:
                release.wait(5)
            yield {"a": torch.full((2, 1), float(i))}

    stream = prefetch(source(), 2)
    assert next(stream)["a"][0, 0] == 0
    for _ in range(50):  # the thread harvests ahead of the consumer, up to the queue's depth
        if len(produced) >= 4:
            break
        threading.Event().wait(0.02)
    assert [i for i, _ in produced] == [0, 1, 2, 3] and {name for _, name in produced} == {"hf_sae-harvest"}
    stream.close()
    release.set()
    assert not any(t.name == "hf_sae-harvest" and t.is_alive() for t in threading.enumerate())  # joined on close
    assert len(produced) == 4

    def failing():
        yield {"a": torch.zeros(2, 1)}
        raise RuntimeError("the LM forward failed")

    stream = prefetch(failing(), 2)
    next(stream)
    with pytest.raises(RuntimeError, match="the LM forward failed"):
        next(stream)
    assert list(prefetch(iter([]), 2)) == [] and prefetch(failing(), 0).__class__.__name__ == "generator"
