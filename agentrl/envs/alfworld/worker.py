"""Worker processes for ``vector=async``: one AlfworldGame per process, stepped in parallel.

A worker imports only the engine (no torch) and applies the expert fix itself,
since a spawn-started process does not inherit the parent's patch.
"""

from __future__ import annotations

import multiprocessing as mp
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


class GameWorkers:
    """N worker processes, each owning one AlfworldGame; calls fan out, then gather."""

    def __init__(self, settings: GameSettings, num_envs: int, start_method: str = "spawn") -> None:
        ctx = mp.get_context(start_method)
        self.conns: list[Connection] = []
        self.procs: list[Any] = []
        for _ in range(num_envs):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_serve, args=(child, settings), daemon=True)
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)

    def call(self, method: str, args: list[tuple[Any, ...]]) -> list[Any]:
        """``game.method(*args[i])`` in worker i, all in parallel; results in order."""
        for conn, arg in zip(self.conns, args):
            conn.send((method, arg))
        results = []
        for i, conn in enumerate(self.conns):
            try:
                status, value = conn.recv()
            except EOFError:
                raise RuntimeError(f"ALFWorld worker {i} died during {method!r} (exit code {self.procs[i].exitcode})") from None
            if status == "error":
                raise RuntimeError(f"ALFWorld worker {i} failed in {method!r}:\n{value}")
            results.append(value)
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
