"""Worker processes for ``vector=async``: one AlfworldGame per process, stepped in parallel.

A worker imports only the engine (no torch) and applies the expert fix itself,
since a spawn-started process does not inherit the parent's patch.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any

from agentrl.envs.alfworld.game import AlfworldGame, GameSettings


def _serve(conn: Connection, settings: GameSettings) -> None:
    from agentrl.envs.alfworld.expert import apply_expert_fix

    apply_expert_fix()
    game = AlfworldGame(settings)
    while True:
        try:
            cmd, arg = conn.recv()
        except EOFError:  # parent went away
            break
        if cmd == "close":
            game.close()
            conn.send(("ok", None))
            break
        try:
            result = getattr(game, cmd)(*arg)
            conn.send(("ok", result))
        except Exception:
            conn.send(("error", traceback.format_exc()))
    conn.close()


START_S = 120.0
"""Seconds a freshly started worker gets on top of ``env.step_timeout_s`` for its first answer (it imports
the engine and loads a game first; minutes on a loaded machine were not seen, tens of seconds were)."""


class WorkerDied(RuntimeError):
    """Worker processes died or hung during a call; the others' results are kept (None for the lost)."""

    def __init__(self, dead: list[int], results: list[Any], method: str, hung: list[int] | None = None) -> None:
        self.hung = hung or []
        what = " and ".join(f"{ids} {verb}" for ids, verb in (([i for i in dead if i not in self.hung], "died"),
                                                             (self.hung, "hung")) if ids)
        super().__init__(f"ALFWorld worker(s) {what} during {method!r}")
        self.dead, self.results = dead, results


class GameWorkers:
    """N worker processes, each owning one AlfworldGame; calls fan out, then gather."""

    def __init__(self, settings: GameSettings, num_envs: int, start_method: str = "spawn",
                 timeout: float | None = None) -> None:
        self.ctx = mp.get_context(start_method)
        self.settings = settings
        self.timeout = timeout
        """Seconds a call waits for each worker's answer; a silent worker counts as dead (None: forever)."""
        self.fresh: list[bool] = []
        """Per worker: not answered yet (its first answer includes importing the engine: START_S more)."""
        self.conns: list[Connection] = []
        self.procs: list[Any] = []
        for _ in range(num_envs):
            conn, proc = self._spawn()
            self.conns.append(conn)
            self.procs.append(proc)
            self.fresh.append(True)

    def _spawn(self) -> tuple[Connection, Any]:
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(target=_serve, args=(child, self.settings), daemon=True)
        proc.start()
        child.close()
        return parent, proc

    def restart(self, i: int) -> None:
        """Replace worker ``i`` (dead, hung or not) with a fresh process."""
        if self.procs[i].is_alive():
            self.procs[i].kill()  # SIGKILL: a stopped or deadlocked worker ignores SIGTERM
        self.procs[i].join(timeout=5)
        self.conns[i].close()
        self.conns[i], self.procs[i] = self._spawn()
        self.fresh[i] = True

    def wait(self, i: int, seconds_left: float | None = None) -> bool:
        """Whether worker ``i`` answers within the timeout (a fresh worker gets START_S more)."""
        if self.timeout is None:
            return True
        left = self.timeout if seconds_left is None else seconds_left
        return self.conns[i].poll(max(0.0, left + (START_S if self.fresh[i] else 0.0)))

    def call(self, method: str, args: list[tuple[Any, ...]]) -> list[Any]:
        """``game.method(*args[i])`` in worker i, all in parallel; results in order."""
        for conn, arg in zip(self.conns, args):
            with contextlib.suppress(BrokenPipeError, ConnectionError):  # a dead worker shows up on recv
                conn.send((method, arg))
        results: list[Any] = []
        dead: list[int] = []
        hung: list[int] = []
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        for i, conn in enumerate(self.conns):
            try:
                if deadline is not None and not self.wait(i, deadline - time.monotonic()):
                    hung.append(i)  # alive but silent past the deadline (stopped, deadlocked, spinning)
                    raise EOFError
                status, value = conn.recv()
                self.fresh[i] = False
            except (EOFError, ConnectionError):  # the process died (killed, segfault, out of memory)
                dead.append(i)
                results.append(None)
                continue
            if status == "error":
                raise RuntimeError(f"ALFWorld worker {i} failed in {method!r}:\n{value}")
            results.append(value)
        if dead:
            raise WorkerDied(dead, results, method, hung)
        return results

    def close(self) -> None:
        for conn in self.conns:
            try:
                conn.send(("close", ()))
                conn.recv()
            except (EOFError, OSError, BrokenPipeError):
                pass
        for proc in self.procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
        self.conns, self.procs = [], []
