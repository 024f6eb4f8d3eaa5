"""Dynamic batching across concurrent requests: every input waits in one bounded queue; one worker takes a
batch at a time (the oldest input and those nearest to it in length, up to a budget of padded tokens),
runs the model in a thread of its own while the event loop goes on taking requests, and hands each request
its vectors in order. A full queue refuses new work (QueueFull -> 429) instead of growing without end."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np


class QueueFull(Exception):
    """The queue holds serve.max_queue inputs already."""


@dataclass
class Batch:
    ids: list[list[int]]      # token ids of each input, in batch order
    group: str                # batches never mix groups (input types, where pooling leaves the prompt out)
    waited: list[float]       # seconds each input spent in the queue before its batch began
    padded_tokens: int        # rows x the longest row


@dataclass(eq=False)
class _Request:
    size: int
    done: asyncio.Future
    vectors: Optional[np.ndarray] = None
    remaining: int = 0


@dataclass(eq=False)
class _Input:
    ids: list[int]
    group: str
    request: _Request
    index: int
    enqueued: float = field(default_factory=time.perf_counter)


class DynamicBatcher:
    def __init__(self, embed: Callable[[Batch], np.ndarray], batch_tokens: int, max_batch: int, max_wait_s: float,
                 max_queue: int, batching: bool = True, on_batch: Callable[[Batch, float], None] = lambda b, s: None):
        """`embed(batch)` -> float32 vectors, one row per input; `batching=False` encodes each request's inputs
        alone (the unbatched baseline of bench/serve.py); `on_batch(batch, seconds)` is told of every batch."""
        self.embed, self.on_batch = embed, on_batch
        self.batch_tokens, self.max_batch, self.max_wait_s = batch_tokens, max_batch, max_wait_s
        self.max_queue, self.batching = max_queue, batching
        self.pending: list[_Input] = []  # arrival order
        self._added = asyncio.Event()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed")  # one model call at a time
        self._worker: Optional[asyncio.Task] = None

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
        self._pool.shutdown(wait=True)

    async def submit(self, ids: list[list[int]], group: str) -> np.ndarray:
        """The vectors of one request's inputs, in order (raises QueueFull when they do not fit in the queue)."""
        if len(self.pending) + len(ids) > self.max_queue:
            raise QueueFull(f"{len(self.pending)} inputs are waiting (serve.max_queue={self.max_queue})")
        request = _Request(len(ids), asyncio.get_running_loop().create_future(), remaining=len(ids))
        self.pending.extend(_Input(t, group, request, i) for i, t in enumerate(ids))
        self._added.set()
        return await request.done

    def _take(self) -> list[_Input]:
        """The oldest input and, around it in length order, the inputs nearest to its length while the batch
        stays within serve.batch_tokens padded tokens and serve.max_batch inputs. Taking the oldest first means
        no input starves, however long; taking neighbours in length means little padding."""
        oldest = self.pending[0]
        same = [x for x in self.pending if x.group == oldest.group and (self.batching or x.request is oldest.request)]
        same.sort(key=lambda x: len(x.ids))
        at = next(i for i, x in enumerate(same) if x is oldest)
        lo, hi, longest = at, at + 1, len(oldest.ids)
        while hi - lo < self.max_batch:
            left = same[lo - 1] if lo > 0 else None
            right = same[hi] if hi < len(same) else None
            options = [x for x in (left, right) if x is not None]
            if not options:
                break
            nearest = min(options, key=lambda x: abs(len(x.ids) - len(oldest.ids)))
            if (hi - lo + 1) * max(longest, len(nearest.ids)) > self.batch_tokens:
                break
            longest = max(longest, len(nearest.ids))
            if nearest is left:
                lo -= 1
            else:
                hi += 1
        taken = same[lo:hi]
        chosen = set(map(id, taken))
        self.pending = [x for x in self.pending if id(x) not in chosen]
        return taken

    def _full(self) -> bool:
        longest = max(len(x.ids) for x in self.pending)
        return len(self.pending) >= self.max_batch or len(self.pending) * longest >= self.batch_tokens

    async def _gather_more(self) -> None:
        """Up to serve.max_wait_ms for more inputs to join, unless the queue already fills a batch. Called only
        under load (batches back to back): the clients the last batch answered are sending their next requests,
        and without the wait these would form a batch of their own (on a CPU, fewer larger batches give more
        embeddings per second). An idle server never waits: a lone request is encoded at once."""
        deadline = time.perf_counter() + self.max_wait_s
        while self.batching and not self._full():
            left = deadline - time.perf_counter()
            if left <= 0:
                return
            self._added.clear()
            try:
                await asyncio.wait_for(self._added.wait(), left)
            except TimeoutError:
                return

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        under_load = False  # the last batch found inputs waiting when it finished
        while True:
            if not self.pending:
                under_load = False
                self._added.clear()
                await self._added.wait()
                continue
            if under_load and self.max_wait_s > 0:
                await self._gather_more()
            taken = self._take()
            began = time.perf_counter()
            batch = Batch([x.ids for x in taken], taken[0].group, [began - x.enqueued for x in taken],
                          len(taken) * max(len(x.ids) for x in taken))
            try:
                vectors = await loop.run_in_executor(self._pool, self.embed, batch)
            except Exception as e:  # the model failed on this batch: its requests fail, the server goes on
                for x in taken:
                    if not x.request.done.done():
                        x.request.done.set_exception(e)
                continue
            self.on_batch(batch, time.perf_counter() - began)
            under_load = True
            for row, x in enumerate(taken):
                request = x.request
                if request.done.done():  # failed in an earlier batch
                    continue
                if request.vectors is None:
                    request.vectors = np.empty((request.size, vectors.shape[1]), dtype=np.float32)
                request.vectors[x.index] = vectors[row]
                request.remaining -= 1
                if not request.remaining:
                    request.done.set_result(request.vectors)
