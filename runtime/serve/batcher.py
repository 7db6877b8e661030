"""Concurrent requests into one model call: the first waiting request opens a batch, which closes
when it holds ``max_batch`` requests or ``max_wait`` seconds have passed, and is scored by one
call in a worker thread (one at a time: the model call uses every core it is given). The queue is
bounded: a request that finds it full is refused at once (the caller answers 503)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence


class QueueFull(RuntimeError):
    pass


class Batcher:
    def __init__(self, run_batch: Callable[[Sequence[Any]], list[Any]], max_batch: int, max_wait_s: float,
                 max_queue: int, on_batch: Callable[[int], None] | None = None):
        self.run_batch = run_batch
        self.max_batch, self.max_wait_s, self.max_queue = max_batch, max_wait_s, max_queue
        self.on_batch = on_batch or (lambda n: None)
        self.queue: asyncio.Queue | None = None
        self.in_flight = 0
        self._task: asyncio.Task | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")

    @property
    def depth(self) -> int:
        """Requests waiting or being scored."""
        return (self.queue.qsize() if self.queue is not None else 0) + self.in_flight

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._pool.shutdown(wait=True)

    async def submit(self, item: Any) -> Any:
        """The result of ``run_batch`` for ``item``; QueueFull when ``max_queue`` wait already."""
        if self.queue is None:
            raise RuntimeError("batcher not started")
        if self.depth >= self.max_queue:
            raise QueueFull(f"{self.depth} requests are waiting (--max-queue {self.max_queue}); try again shortly")
        fut = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((item, fut))
        return await fut

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.max_wait_s
            while len(batch) < self.max_batch:
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), left))
                except asyncio.TimeoutError:
                    break
            while len(batch) < self.max_batch and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            batch = [(item, fut) for item, fut in batch if not fut.cancelled()]  # the client went away
            if not batch:
                continue
            self.in_flight = len(batch)
            try:
                results = await loop.run_in_executor(self._pool, self.run_batch, [item for item, _ in batch])
            except Exception as e:  # noqa: BLE001 - handed to every waiting request
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)
            else:
                self.on_batch(len(batch))
                for (_, fut), res in zip(batch, results):
                    if not fut.done():
                        fut.set_result(res)
            finally:
                self.in_flight = 0
