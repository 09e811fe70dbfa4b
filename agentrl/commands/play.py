"""Play a gym_cards game by hand in the terminal (``agentrl play numberline``).

Each turn shows the text state, the legal actions and the rewards so far;
type an action name, ``?`` for the expert's suggestion and its reasoning, or
``q`` to quit. Finished episodes start the next one from the same seeded stream.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium
from rich.console import Console
from rich.panel import Panel

from agentrl.envs import GYM_IDS


def run_play(
    game: str,
    seed: int,
    options: dict[str, Any],
    *,
    console: Console | None = None,
    read: Callable[[str], str] | None = None,
    save_image: str | None = None,
) -> int:
    """Play ``game`` interactively; returns the exit code (0 on quit or end of input, 2 on a bad game/option).

    ``read`` replaces the console's input (for scripts and tests); ``save_image``
    writes the current observation to that PNG path after every move.
    """
    console = console or Console()
    read = read or console.input
    if game not in GYM_IDS:
        console.print(f"[red]unknown game {game!r}; choose one of {', '.join(GYM_IDS)}[/red]")
        return 2
    try:
        env = gymnasium.make(GYM_IDS[game], **options)
    except TypeError as e:
        console.print(f"[red]bad option for {game}: {e}; options are the game's keyword arguments[/red]")
        return 2
    game_env = env.unwrapped
    names: list[str] = list(game_env.action_names)
    obs, info = env.reset(seed=seed)
    episode, ret, reward = 1, 0.0, None
    console.print(f"[bold]{game}[/bold]: type an action, [cyan]?[/cyan] for a hint, [cyan]q[/cyan] to quit.")
    while True:
        _save(obs, save_image)
        status = f"episode {episode}, return so far {ret:g}" + (
            "" if reward is None else f", last reward {reward:g}"
        )
        console.print(Panel(info["text"], title=game, expand=False))
        console.print(status)
        console.print("legal actions: " + "  ".join(names))
        try:
            answer = read("action> ").strip()
        except (EOFError, KeyboardInterrupt):
            console.print()
            return 0
        if answer in ("q", "quit", "exit"):
            return 0
        if answer == "?":
            fields = game_env.expert_fields()
            console.print(f"[green]expert:[/green] {fields['thoughts']}  ->  [bold]{fields['action']}[/bold]")
            continue
        if answer not in names:
            console.print(
                f"[yellow]{answer!r} is not a legal action; type one of: {' '.join(names)}[/yellow]"
            )
            continue
        obs, reward, terminated, truncated, info = env.step(names.index(answer))
        ret += float(reward)
        if terminated or truncated:
            _save(obs, save_image)
            how = "ended" if terminated else "was cut off (step limit)"
            console.print(Panel(info["text"], title="final state", expand=False))
            console.print(f"[bold]Episode {episode} {how}[/bold] with reward {reward:g}, return {ret:g}.\n")
            obs, info = env.reset()
            episode, ret, reward = episode + 1, 0.0, None


def _save(obs: Any, path: str | None) -> None:
    if path:
        from PIL import Image

        Image.fromarray(obs).save(path)
