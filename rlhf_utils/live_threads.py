"""The live loop's two threads: the reader's session (the kernel's thread) and the worker.

The reader clicks on the kernel's own thread; the loop trains on a background thread, so a
click never waits for training (:mod:`rlhf_utils.live_loop` has the rounds themselves).

* :class:`LiveSession` -- :class:`rlhf_utils.rating.PairwiseSession` (no blind repeats, no
  calibration pairs: the loop's pairs change every round) whose queue grows while the reader
  rates (:meth:`LiveSession.extend`; a reader who had rated everything is moved to the first new
  pair), and whose every handler holds one re-entrant :attr:`LiveSession.lock`, as the widget does
  while it draws: both threads change the session. A verdict is still one fsync'd line in the
  store before the handler returns, whatever the loop is doing.
* :class:`LoopWorker` -- the background thread of a :class:`rlhf_utils.live_loop.LiveLoop`: it
  sleeps until ``k`` labels are queued (each click wakes it), runs a round, hands the new pairs
  to every session, and tells the panels. The queue is the store itself: labels given during a
  round wait there for the next one, so none is lost. A failed round stops the thread with
  ``loop.error`` set; nothing is retried behind the reader's back.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Sequence

from rlhf_utils.checks import check_tuples
from rlhf_utils.feedback import item_key
from rlhf_utils.rating import Entry, PairwiseSession, _coin, _sources

WAITING = ("You have rated every pair offered so far: the next ones come from the policy once the loop has "
           "trained on your labels (the panel shows the round).")


class LiveSession(PairwiseSession):
    """A :class:`PairwiseSession` whose queue grows (:meth:`extend`), shared by two threads (:attr:`lock`)."""

    def __init__(self, pairs: Sequence[Sequence[str]], store, annotator: str | None = None, *,
                 sources: dict | Sequence[dict] | None = None, seed: int = 0, clock=time.monotonic):
        self.lock = threading.RLock()
        self._seed = seed
        super().__init__(pairs, store, annotator, repeat_every=0, sources=sources, seed=seed, clock=clock)

    def extend(self, pairs: Sequence[Sequence[str]], sources: dict | Sequence[dict] | None = None) -> int:
        """Add ``(prompt, a, b)`` pairs at the end of the queue (one already queued is left out);
        returns how many were added. A reader waiting at the end is moved to the first new one."""
        pairs = check_tuples("pairs", pairs, 3, "(prompt, completion_a, completion_b)")
        sources = _sources(sources, len(pairs), "pair")
        with self.lock:
            queued, added = {e.key for e in self.entries}, 0
            waiting = self.started and self.position >= len(self.entries)
            for (prompt, a, b), src in zip(pairs, sources):
                key = item_key(prompt, a, b)
                if key in queued:
                    continue
                queued.add(key)
                self.entries.append(Entry(index=len(self.entries), key=key, prompt=prompt, completions=(a, b),
                                          source=src, swapped=_coin(self._seed, key, "item")))
                added += 1
            self._store_stamp = None  # new keys: the done map is rebuilt from the store
            self.refresh()
            if waiting and added:
                self._move(self._first_undone(self.position))
                self.message = f"{added} new pair(s) from the updated policy."
            self._changed()
        return added

    def _locked(name: str):  # noqa: N805 -- builds the locked handlers below
        parent = getattr(PairwiseSession, name)

        def handler(self, *args: Any, **kwargs: Any):
            with self.lock:
                out = parent(self, *args, **kwargs)
                if name in ("choose", "key") and self.started and self.entries and self.current is None:
                    self.message = WAITING
                    self._changed()
                return out

        handler.__name__, handler.__doc__ = name, parent.__doc__
        return handler

    choose = _locked("choose")
    _act = choose
    undo = _locked("undo")
    go_to = _locked("go_to")
    start = _locked("start")
    next_undone = _locked("next_undone")
    key = _locked("key")
    refresh = _locked("refresh")
    del _locked


class LoopWorker:
    """The background thread of a live loop, mixed into :class:`rlhf_utils.live_loop.LiveLoop`, whose
    ``cfg``, ``store``, ``offered``, ``round``, ``pending()``, ``labels()`` and ``train_round()`` it uses."""

    def _init_worker(self) -> None:
        self.sessions: list[LiveSession] = []
        self.on_update: list[Callable[[], None]] = []  # display callbacks, called from either thread
        self.status, self.error = "waiting", None
        self._wake, self._halt, self._thread, self._force = threading.Event(), threading.Event(), None, False
        self._cond = threading.Condition()
        self.rounds_shown = 0  # rounds whose pairs have reached the sessions (the loop sets it on loading)

    def session(self, annotator: str | None = None) -> LiveSession:
        """A rating session on the loop's store over every pair offered so far; the worker adds
        each round's pairs to it. A new kernel's session resumes at the first pair not rated."""
        s = LiveSession([tuple(p[:3]) for p in self.offered], self.store, annotator, seed=self.cfg.seed,
                        sources=[{"live_round": p[3]} for p in self.offered])
        s.on_change.append(self.notify)
        self.sessions.append(s)
        return s

    def notify(self) -> None:
        """A label came in (the session calls this): wake the worker, refresh the panels."""
        self._wake.set()
        self._updated()

    def _updated(self) -> None:
        for callback in list(self.on_update):
            try:
                callback()
            except Exception:  # a display callback must never stop the loop
                pass

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> "LoopWorker":
        """Run rounds on a background thread whenever ``k`` labels are queued."""
        if not self.running:
            self._halt.clear()
            self.error, self.status = None, "waiting"
            self._thread = threading.Thread(target=self._work, name="rlhf-live-loop", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float | None = 60) -> None:
        """Stop the worker after the round in progress (if any)."""
        self._halt.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def train_now(self) -> None:
        """Start a round on the labels queued, even if fewer than ``k`` (the panel's button)."""
        self._force = True
        self._wake.set()

    def wait(self, rounds: int, timeout: float = 600) -> bool:
        """Block until ``rounds`` rounds are done and their pairs are in the sessions (True), or the
        worker stopped, or ``timeout`` seconds passed (False)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.rounds_shown < rounds and self.running and time.monotonic() < deadline:
                self._cond.wait(min(1.0, max(0.0, deadline - time.monotonic())))
        return self.rounds_shown >= rounds

    def _work(self) -> None:
        while not self._halt.is_set():
            self._wake.clear()  # before counting: a click from now on wakes the wait below
            queued = len(self.pending())
            if queued < self.cfg.k and not (self._force and queued):
                self._wake.wait(0.5)
                continue
            self.status, self._force = "training", False
            self._updated()
            try:
                offer = self.train_round()
            except BaseException as exc:  # NaN, out of memory, a full disk...: stop, say so, keep the labels
                self.error = (f"Training stopped in round {self.round + 1}: {type(exc).__name__}: {exc}. Every label "
                              f"is kept in {self.store.path} ({len(self.labels())} so far); the saved state is round "
                              f"{self.round}'s, in {self.state_dir}. Fix the cause and run the cell again to resume.")
                self.status, self._in_round = "stopped", set()
                with self._cond:
                    self._cond.notify_all()
                self._updated()
                return
            for s in list(self.sessions):
                s.extend(offer, sources={"live_round": self.round})
            self.status = "waiting"
            with self._cond:
                self.rounds_shown = self.round
                self._cond.notify_all()
            self._updated()
        self.status = "stopped" if self.error else "paused"
        with self._cond:
            self._cond.notify_all()
