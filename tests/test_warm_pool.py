"""The warm pool: sandboxes started ahead of their tasks, each given out once, never more than its size."""

from __future__ import annotations

import itertools
import threading
import time

from sharpe_rl.sandbox.executor import WarmPool


class Sandboxes:
    """Numbered stand-ins for sandboxes; `dead` ones report they stopped waiting."""

    def __init__(self) -> None:
        self.numbers = itertools.count()
        self.started: list[int] = []
        self.discarded: list[int] = []
        self.dead: set[int] = set()
        self.lock = threading.Lock()
        self.threads: dict[int, threading.Thread] = {}  # the thread that started each one

    def start(self) -> int:
        with self.lock:
            number = next(self.numbers)
            self.started.append(number)
            self.threads[number] = threading.current_thread()
        return number

    def alive(self, number: int) -> bool:
        return number not in self.dead

    def discard(self, number: int) -> None:
        with self.lock:
            self.discarded.append(number)


def pool_of(size: int, sandboxes: Sandboxes) -> WarmPool[int]:
    return WarmPool(size, sandboxes.start, sandboxes.alive, sandboxes.discard)


def settle(sandboxes: Sandboxes, started: int) -> None:
    deadline = time.monotonic() + 10
    while len(sandboxes.started) < started:
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_each_sandbox_is_taken_once_and_every_take_starts_one_replacement():
    sandboxes = Sandboxes()
    pool = pool_of(2, sandboxes)
    time.sleep(0.1)
    assert sandboxes.started == []  # nothing starts before a task needs a sandbox
    taken = [pool.take() for _ in range(5)]
    assert len(set(taken)) == 5
    settle(sandboxes, 7)  # the first take fills the pool (2) and replaces itself, then one replacement per take
    time.sleep(0.1)
    assert len(sandboxes.started) == 7
    pool.close()
    assert sorted(sandboxes.discarded) == sorted(set(sandboxes.started) - set(taken))


def test_a_sandbox_that_died_while_waiting_is_discarded_never_given_out():
    sandboxes = Sandboxes()
    pool = pool_of(1, sandboxes)
    first = pool.take()
    settle(sandboxes, 2)
    waiting = 1 - first
    sandboxes.dead.add(waiting)
    assert pool.take() not in (first, waiting)
    assert waiting in sandboxes.discarded
    pool.close()


def test_without_a_pool_every_take_starts_a_sandbox_on_the_spot():
    sandboxes = Sandboxes()
    pool = pool_of(0, sandboxes)
    assert sandboxes.started == []
    assert [pool.take(), pool.take()] == [0, 1]
    pool.close()
    assert sandboxes.discarded == []


def test_the_threads_that_start_sandboxes_outlive_them_while_the_pool_is_open():
    # bubblewrap's --die-with-parent kills a sandbox when the thread that started it ends: the process
    # executor's pool once started each sandbox on a thread of its own that ended at once.
    sandboxes = Sandboxes()
    pool = pool_of(2, sandboxes)
    taken = [pool.take() for _ in range(3)]
    settle(sandboxes, 5)
    time.sleep(0.2)
    assert all(sandboxes.threads[number].is_alive() for number in sandboxes.started if number not in taken)
    assert all(sandboxes.threads[number].is_alive() for number in taken)
    pool.close()
