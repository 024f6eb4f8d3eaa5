"""serve/batcher.py: which inputs share a batch, order kept per request, a bounded queue, failures contained;
and the queue's bound as HTTP 429 through the real server."""

from __future__ import annotations

import asyncio
import threading

import httpx
import numpy as np
import pytest
from helpers import serving

from embedtune.serve.batcher import Batch, DynamicBatcher, QueueFull


def echo(batch: Batch) -> np.ndarray:
    """A model whose vector is [first token id, length]: each input's vector says which input it was."""
    return np.array([[ids[0], len(ids)] for ids in batch.ids], dtype=np.float32)


def run(coroutine_factory, **settings):
    """Start a batcher over `echo` (recording its batches), run the coroutine, stop the batcher."""
    batches: list[Batch] = []
    defaults = dict(batch_tokens=64, max_batch=8, max_wait_s=0.05, max_queue=100)

    async def main():
        batcher = DynamicBatcher(settings.pop("embed", echo), **{**defaults, **settings},
                                 on_batch=lambda b, s: batches.append(b))
        batcher.start()
        try:
            return await coroutine_factory(batcher)
        finally:
            await batcher.stop()
    return asyncio.run(main()), batches


def test_each_request_gets_its_own_vectors_in_order_across_batches():
    requests = [[[100 * r + i] * (1 + (i * 7 + r) % 9) for i in range(1 + r % 5)] for r in range(20)]
    results, batches = run(lambda b: asyncio.gather(*(b.submit(ids, "") for ids in requests)))
    for ids, vectors in zip(requests, results):
        assert vectors.tolist() == [[float(t[0]), float(len(t))] for t in ids]
    assert len(batches) < sum(map(len, requests))  # inputs of different requests shared batches
    assert all(b.padded_tokens <= 64 and len(b.ids) <= 8 for b in batches)  # the budgets
    assert all(b.padded_tokens == len(b.ids) * max(map(len, b.ids)) for b in batches)


def test_the_oldest_input_goes_first_with_the_nearest_lengths_around_it():
    async def scenario(batcher):
        lengths = [5, 1, 30, 6, 4, 29, 7]
        return await asyncio.gather(*(batcher.submit([[i] * n], "") for i, n in enumerate(lengths)))
    _, batches = run(scenario, batch_tokens=24, max_wait_s=0.2)
    first = sorted(len(ids) for ids in batches[0].ids)
    assert 5 in first and 30 not in first and 29 not in first  # the oldest (5 tokens) with its neighbours in length
    assert batches[0].padded_tokens <= 24
    assert sorted(len(i) for b in batches for i in b.ids) == [1, 4, 5, 6, 7, 29, 30]  # nothing lost, nothing twice


def test_groups_never_share_a_batch_and_unbatched_mode_keeps_requests_apart():
    async def scenario(batcher):
        return await asyncio.gather(batcher.submit([[1], [2]], "query"), batcher.submit([[3], [4]], "passage"),
                                    batcher.submit([[5]], "query"))
    _, batches = run(scenario, max_wait_s=0.2)
    assert all(len({b.group}) == 1 for b in batches) and {b.group for b in batches} == {"query", "passage"}
    assert sorted(sorted(i[0] for i in b.ids) for b in batches) == [[1, 2, 5], [3, 4]]
    _, alone = run(scenario, batching=False)
    assert sorted(sorted(i[0] for i in b.ids) for b in alone) == [[1, 2], [3, 4], [5]]


def test_a_full_queue_refuses_and_a_failed_batch_fails_only_its_requests():
    release = threading.Event()
    calls = []

    def slow_then_failing(batch: Batch) -> np.ndarray:
        calls.append(batch)
        release.wait(10)
        if any(ids[0] == 666 for ids in batch.ids):
            raise RuntimeError("model failed")
        return echo(batch)

    async def scenario(batcher):
        first = asyncio.ensure_future(batcher.submit([[1]] * 4, ""))  # taken by the worker, which blocks
        await asyncio.sleep(0.1)
        waiting = asyncio.ensure_future(batcher.submit([[2]] * 5, ""))
        await asyncio.sleep(0.05)
        with pytest.raises(QueueFull, match="max_queue=6"):
            await batcher.submit([[3]] * 2, "")  # 5 waiting + 2 > 6
        release.set()
        assert (await first).shape == (4, 2) and (await waiting).shape == (5, 2)
        with pytest.raises(RuntimeError, match="model failed"):
            await batcher.submit([[666]], "")
        return await batcher.submit([[7]], "")  # the worker goes on
    after, _ = run(scenario, embed=slow_then_failing, max_queue=6, max_wait_s=0.0)
    assert after.tolist() == [[7.0, 1.0]]


def test_the_server_answers_429_when_its_queue_is_full(served_model_dir):
    """64 requests of 4 texts at once against a queue of 4 inputs: those that find it full get a 429 with
    Retry-After (each of the rest its own vectors), and the server serves on."""
    texts = [[f"the {w} of the city", "fish", "blue river", w] for w in ["cat", "dog", "heart", "lung"] * 16]
    with serving(served_model_dir, max_queue=4, max_inputs=4) as server:
        async def all_at_once():
            async with httpx.AsyncClient(timeout=30) as client:
                return await asyncio.gather(*(client.post(f"{server.url}/embeddings", json={"input": t}) for t in texts))
        answers = asyncio.run(all_at_once())
        refused = [a for a in answers if a.status_code == 429]
        assert refused and all(a.status_code in (200, 429) for a in answers)
        assert all(a.headers["retry-after"] == "1" and a.json()["error"]["code"] == "queue_full" for a in refused)
        assert all(len(a.json()["data"]) == 4 for a in answers if a.status_code == 200)
        assert httpx.post(f"{server.url}/embeddings", json={"input": ["d", "e"]}).status_code == 200
