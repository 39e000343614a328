"""Requests that arrive together are scored together, as TF Serving's batching does for its own calls.

A request's cost is mostly fixed: one online-store read and one serving call cost about the same for
one flight as for eight. So while `in_flight` batches are being scored, the requests that arrive wait
in a queue, and the next batch to start takes them all at once (up to `max_flights`). Nothing waits on
a timer: a request that finds a batch slot free is scored at once, alone; only under load do requests
share a batch.

`run` scores a batch in a worker thread (it reads Postgres and calls serving, both blocking) and
returns one outcome per item: its result, or the exception that item's caller gets. An exception
out of `run` itself goes to every caller of the batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

Item = TypeVar("Item")


@dataclass
class _Waiting(Generic[Item]):
    item: Item
    size: int
    answer: asyncio.Future[Any]


class Coalescer(Generic[Item]):
    """Hands queued items to `run` in batches of at most `max_flights` (a larger item goes alone), with at
    most `in_flight` batches running at once. Used only from the event loop's thread."""

    def __init__(self, run: Callable[[list[Item]], Sequence[Any]], max_flights: int, in_flight: int = 2) -> None:
        if max_flights < 1 or in_flight < 1:
            raise ValueError(f"max_flights={max_flights} and in_flight={in_flight} must be at least 1")
        self.run, self.max_flights, self.in_flight = run, max_flights, in_flight
        self._queue: list[_Waiting[Item]] = []
        self._running = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0  # batches run, and the items in them: how much sharing the load brought
        self.items = 0

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def submit(self, item: Item, size: int) -> Any:
        """`item`'s outcome (`size`: its flights); raises the exception meant for it."""
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append(_Waiting(item, size, answer))
        self._start()
        outcome = await answer
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def _take(self) -> list[_Waiting[Item]]:
        batch, flights = [], 0
        while self._queue and (not batch or flights + self._queue[0].size <= self.max_flights):
            waiting = self._queue.pop(0)
            if waiting.answer.done():  # its caller went away (cancelled) while it queued
                continue
            batch.append(waiting)
            flights += waiting.size
        return batch

    def _start(self) -> None:
        while self._queue and self._running < self.in_flight:
            batch = self._take()
            if not batch:
                return
            self._running += 1
            task = asyncio.create_task(self._score(batch))
            self._tasks.add(task)  # a task nothing refers to may be collected before it ends
            task.add_done_callback(self._tasks.discard)

    async def _score(self, batch: list[_Waiting[Item]]) -> None:
        outcomes: Sequence[Any] = []
        try:
            outcomes = await asyncio.to_thread(self.run, [w.item for w in batch])
            if len(outcomes) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} gave {len(outcomes)} outcomes")
        except Exception as err:  # every caller of the batch hears of it
            outcomes = [err] * len(batch)
        except BaseException as err:  # cancelled (the server stops) or worse: no caller may wait for ever
            outcomes = [RuntimeError(f"the batch was interrupted: {type(err).__name__}")] * len(batch)
            raise
        finally:
            self._running -= 1
            self.batches += 1
            self.items += len(batch)
            for waiting, outcome in zip(batch, outcomes, strict=True):
                if not waiting.answer.done():
                    waiting.answer.set_result(outcome)
            self._start()
