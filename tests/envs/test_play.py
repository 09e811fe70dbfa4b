"""Playing by hand: scripted input drives a real game through the terminal loop."""

import io

from rich.console import Console

from agentrl.commands.play import run_play


def _run(game, lines, options=None, **kwargs):
    script = iter(lines)

    def read(prompt):
        try:
            return next(script)
        except StopIteration:
            raise EOFError from None

    out = io.StringIO()
    code = run_play(game, 0, options or {}, console=Console(file=out, width=120), read=read, **kwargs)
    return code, out.getvalue()


def test_hint_illegal_move_win_and_quit(tmp_path):
    image = tmp_path / "frame.png"
    # seed 0, max_position 3: target 3, current 1.
    code, text = _run("numberline", ["?", "jump", "+", "+", "q"], {"max_position": 3}, save_image=str(image))
    assert code == 0
    assert "expert:" in text and "increase it with '+'" in text
    assert "'jump' is not a legal action" in text
    assert "Episode 1 ended with reward 1, return 1" in text
    assert "episode 2" in text
    assert image.stat().st_size > 0


def test_end_of_input_quits_and_bad_game_or_option_is_exit_code_2():
    assert _run("points24", [])[0] == 0
    code, text = _run("chess", [])
    assert code == 2 and "numberline" in text
    code, text = _run("numberline", [], {"max_pos": 3})
    assert code == 2 and "max_pos" in text
