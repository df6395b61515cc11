"""Progress bars on the job's terminal (tqdm, with an ETA once the total is known), also for work done elsewhere.

A Ray Train worker cannot draw on the driver's terminal (its output stays in Ray's log folder), so it moves the
driver's bar through a `ProgressBoard`: `board.update(done, total, note)` from any process, while the driver polls.

    with remote_bar("training", unit="step") as board:
        trainer = TorchTrainer(..., train_loop_config={"progress": board, ...})  # a worker: board.update(step, total)
        trainer.fit()
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import ray
from tqdm import tqdm

POLL_SECONDS = 1.0


def bar(total: int | None = None, desc: str = "", unit: str = "it") -> tqdm:
    """One stage's bar on stderr; `total` None counts without an ETA."""
    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, mininterval=POLL_SECONDS, leave=True)


class _State:
    """(done, total, note) of a bar; lives in the driver, or in an actor when workers are remote."""

    def __init__(self):
        self.value: tuple[int, int | None, str] = (0, None, "")

    def set(self, done: int, total: int | None, note: str) -> None:
        self.value = (done, total, note)

    def get(self) -> tuple[int, int | None, str]:
        return self.value


class ProgressBoard:
    """What a worker holds to move the driver's bar; pickles into a Ray Train loop config as an actor handle."""

    def __init__(self, remote: bool):
        self._actor = ray.remote(num_cpus=0)(_State).remote() if remote else None
        self._local = None if remote else _State()

    def update(self, done: int, total: int | None = None, note: str = "") -> None:
        if self._actor is not None:
            self._actor.set.remote(done, total, note)  # fire and forget: a worker never waits for the driver
        else:
            self._local.set(done, total, note)

    def read(self) -> tuple[int, int | None, str]:
        return ray.get(self._actor.get.remote()) if self._actor is not None else self._local.get()

    def close(self) -> None:
        if self._actor is not None:
            ray.kill(self._actor)


@contextmanager
def remote_bar(desc: str, unit: str = "it", show: bool = True) -> Iterator[ProgressBoard]:
    """A board for workers and, when `show`, a driver-side bar that follows it until the block ends."""
    board = ProgressBoard(remote=ray.is_initialized())
    if not show:
        try:
            yield board
        finally:
            board.close()
        return
    shown, stop = bar(desc=desc, unit=unit), threading.Event()

    def follow() -> None:
        drawn = None
        while True:
            state = board.read()
            if state != drawn:  # redraw on change only: a log file gets no repeated frames
                _draw(shown, *state)
                drawn = state
            if stop.wait(POLL_SECONDS):
                return

    thread = threading.Thread(target=follow, name=f"progress-{desc}", daemon=True)
    thread.start()
    try:
        yield board
    finally:
        stop.set()
        thread.join()
        _draw(shown, *board.read())
        shown.close()
        board.close()


def _draw(shown: tqdm, done: int, total: int | None, note: str) -> None:
    if total is not None and shown.total != total:
        shown.total = total
    shown.update(done - shown.n)
    if note:
        shown.set_postfix_str(note, refresh=False)
    shown.refresh()
