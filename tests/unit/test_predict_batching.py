"""The prediction service's batching (`include/predict/batching.py`): requests that arrive while a batch is
scored share the next one, each gets its own outcome, and no one waits on a timer."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from include.predict.batching import Coalescer


class Scorer:
    """`run` for a Coalescer: records each batch; blocks while `gate` is clear, so a test decides when a
    batch ends; answers each item with itself doubled, or the exception the item asks for."""

    def __init__(self) -> None:
        self.batches: list[list[object]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __call__(self, items: list[object]) -> list[object]:
        self.batches.append(list(items))
        self.entered.set()
        if not self.gate.wait(timeout=10):
            raise TimeoutError("the test never opened the gate")
        if any(item == "explode" for item in items):
            raise RuntimeError("the whole batch failed")
        return [ValueError(f"bad {item}") if item == "bad" else item * 2 for item in items]  # type: ignore[operator]


async def _entered(scorer: Scorer) -> None:
    while not scorer.entered.is_set():
        await asyncio.sleep(0.001)
    scorer.entered.clear()


async def _held(coalescer: Coalescer, scorer: Scorer, item: object = 0) -> asyncio.Future:
    """A first batch of `item` that runs and is held until the test opens `scorer.gate`."""
    scorer.gate.clear()
    held = asyncio.ensure_future(coalescer.submit(item, size=1))
    await _entered(scorer)
    return held


def test_a_request_that_finds_the_scorer_idle_is_scored_at_once_alone() -> None:
    scorer = Scorer()

    async def main() -> tuple[object, float]:
        coalescer = Coalescer(scorer, max_flights=100)
        started = time.perf_counter()
        answer = await coalescer.submit(21, size=1)
        return answer, time.perf_counter() - started

    answer, took = asyncio.run(main())
    assert answer == 42
    assert scorer.batches == [[21]]
    assert took < 0.5  # no timer holds it back to wait for company


def test_requests_arriving_while_a_batch_runs_share_the_next_batch_and_each_gets_its_own_answer() -> None:
    scorer = Scorer()

    async def main() -> list[object]:
        coalescer = Coalescer(scorer, max_flights=100, in_flight=1)
        first = await _held(coalescer, scorer, 1)  # batch 1 is running and held
        rest = [asyncio.ensure_future(coalescer.submit(n, size=1)) for n in range(2, 9)]
        await asyncio.sleep(0.01)
        assert coalescer.queued == 7  # they wait: one batch at a time
        scorer.gate.set()
        answers = await asyncio.gather(first, *rest)
        assert (coalescer.batches, coalescer.items) == (2, 8)
        return answers

    assert asyncio.run(main()) == [2, 4, 6, 8, 10, 12, 14, 16]
    assert scorer.batches == [[1], [2, 3, 4, 5, 6, 7, 8]]


def test_a_batch_holds_at_most_max_flights_and_a_larger_request_goes_alone() -> None:
    scorer = Scorer()

    async def main() -> None:
        coalescer = Coalescer(scorer, max_flights=10, in_flight=1)
        held = await _held(coalescer, scorer)
        sizes = {1: 4, 2: 4, 3: 4, 4: 25, 5: 1}
        waiting = [asyncio.ensure_future(coalescer.submit(n, size=s)) for n, s in sizes.items()]
        await asyncio.sleep(0.01)
        scorer.gate.set()
        await asyncio.gather(held, *waiting)

    asyncio.run(main())
    # 4 + 4 fit in 10, the third 4 does not; 25 is over the cap and goes alone; 1 follows it.
    assert scorer.batches == [[0], [1, 2], [3], [4], [5]]


def test_an_item_that_fails_fails_only_its_caller_and_a_failed_batch_fails_all_its_callers() -> None:
    scorer = Scorer()

    async def main() -> tuple[list[object], list[object]]:
        coalescer = Coalescer(scorer, max_flights=100, in_flight=1)
        held = await _held(coalescer, scorer)
        mixed = [asyncio.ensure_future(coalescer.submit(item, size=1)) for item in (1, "bad", 3)]
        await asyncio.sleep(0.01)
        scorer.gate.set()
        first = await asyncio.gather(held, *mixed, return_exceptions=True)
        held = await _held(coalescer, scorer)
        doomed = [asyncio.ensure_future(coalescer.submit(item, size=1)) for item in (5, "explode")]
        await asyncio.sleep(0.01)
        scorer.gate.set()
        second = await asyncio.gather(held, *doomed, return_exceptions=True)
        return first, second

    first, second = asyncio.run(main())
    assert first[:2] == [0, 2]
    assert first[3] == 6
    assert isinstance(first[2], ValueError)
    assert str(first[2]) == "bad bad"
    assert second[0] == 0
    assert all(isinstance(e, RuntimeError) and "whole batch" in str(e) for e in second[1:])


def test_a_batch_interrupted_by_a_base_exception_still_answers_its_callers_and_the_queue_moves_on() -> None:
    class Fatal(BaseException):
        pass

    calls: list[list[object]] = []

    def run(items: list[object]) -> list[object]:
        calls.append(list(items))
        if len(calls) == 1:
            raise Fatal("not an Exception")
        return [item for item in items]

    async def main() -> tuple[object, object]:
        coalescer = Coalescer(run, max_flights=100, in_flight=1)
        first = asyncio.ensure_future(coalescer.submit(1, size=1))
        later = asyncio.ensure_future(coalescer.submit(2, size=1))  # queued behind the batch that dies
        done = await asyncio.wait_for(asyncio.gather(first, later, return_exceptions=True), timeout=5)
        return done[0], done[1]

    first, later = asyncio.run(main())
    assert isinstance(first, RuntimeError)
    assert "interrupted: Fatal" in str(first)
    assert later == 2
    assert calls == [[1], [2]]


def test_a_caller_that_went_away_while_queued_is_not_scored() -> None:
    scorer = Scorer()

    async def main() -> None:
        coalescer = Coalescer(scorer, max_flights=100, in_flight=1)
        held = await _held(coalescer, scorer)
        gone = asyncio.ensure_future(coalescer.submit(1, size=1))
        stays = asyncio.ensure_future(coalescer.submit(2, size=1))
        await asyncio.sleep(0.01)
        gone.cancel()  # the client disconnected
        scorer.gate.set()
        assert await held == 0
        assert await stays == 4
        with pytest.raises(asyncio.CancelledError):
            await gone

    asyncio.run(main())
    assert scorer.batches == [[0], [2]]


def test_with_two_batches_in_flight_a_second_batch_starts_while_the_first_runs() -> None:
    scorer = Scorer()

    async def main() -> None:
        coalescer = Coalescer(scorer, max_flights=100, in_flight=2)
        one = await _held(coalescer, scorer, 1)
        two = asyncio.ensure_future(coalescer.submit(2, size=1))
        await _entered(scorer)  # started though the first is still held
        assert coalescer.queued == 0
        scorer.gate.set()
        assert await asyncio.gather(one, two) == [2, 4]

    asyncio.run(main())
    assert scorer.batches == [[1], [2]]


def test_limits_below_one_are_refused() -> None:
    with pytest.raises(ValueError, match="max_flights=0"):
        Coalescer(Scorer(), max_flights=0)
    with pytest.raises(ValueError, match="in_flight=0"):
        Coalescer(Scorer(), max_flights=1, in_flight=0)
