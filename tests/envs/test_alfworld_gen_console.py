"""The game generator's progress goes to stderr: commands whose stdout is their output stay clean."""

from agentrl.envs.alfworld.gen import _progress


def test_generation_progress_writes_to_stderr_not_stdout(capsys):
    progress = _progress()
    progress.console.print("generating")
    out, err = capsys.readouterr()
    assert out == "" and "generating" in err
