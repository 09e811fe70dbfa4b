"""The README and docs/ stay true: their links and the files they name exist, and every `agentrl`
command line in their code blocks parses, its config and overrides loading as written."""

import re
import shlex
from pathlib import Path

import pytest

from agentrl.cli import _parsers
from agentrl.config import load_config

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PATH_PREFIXES = ("agentrl/", "tests/", "conf/", "tools/", "experiments/", "docs/")
COMMAND = re.compile(r"(?:^|\s)(?:agentrl|-m agentrl\.cli) (fit|sft|eval|sweep|export|play|make-tiny-model|alfworld-gen)\b")


def code_lines(text: str) -> list[str]:
    """The lines of the page's fenced code blocks, backslash continuations joined, comments cut."""
    lines, inside, held = [], False, ""
    for line in text.splitlines():
        if line.startswith("```"):
            inside = not inside
            continue
        if not inside:
            continue
        line = held + line.split("  #")[0].strip()
        if line.endswith("\\"):
            held = line[:-1] + " "
            continue
        held = ""
        lines.append(line)
    return lines


def commands() -> list[tuple[str, str]]:
    """(page, command line) of every concrete `agentrl` command in a code block. A synopsis line (one holding
    ``[...]`` optional parts or ``...``) is not a command and is left out."""
    found = []
    for page in PAGES:
        for line in code_lines(page.read_text()):
            match = COMMAND.search(line)
            if match is None or "..." in line or re.search(r"\[-", line) or line.startswith("$ "):
                continue
            found.append((page.name, line[match.start():].strip().removeprefix("-m agentrl.cli ")
                          .removeprefix("agentrl ")))
    return found


def test_the_pages_hold_commands():
    assert len(commands()) >= 30, commands()


@pytest.mark.parametrize("page,line", commands(), ids=[f"{p}:{c[:60]}" for p, c in commands()])
def test_every_command_in_the_docs_parses_and_its_config_loads(page, line):
    root, _ = _parsers()
    argv = shlex.split(line, comments=True)
    if "--help" in argv:
        with pytest.raises(SystemExit) as done:
            root.parse_args(argv)
        assert done.value.code == 0, f"{page}: {line}"
        argv.remove("--help")
    args = root.parse_args(argv)  # an unknown option exits 2 here (SystemExit fails the test)
    config = getattr(args, "config", None)
    if config is None:
        return
    assert (ROOT / config).is_file(), f"{page}: {line}: no config file {config}"
    cfg = load_config(ROOT / config, args.overrides)
    for grid in getattr(args, "grid", []):  # every swept value is a valid override too
        key, values = grid.split("=", 1)
        for value in values.split(","):
            load_config(ROOT / config, [*args.overrides, f"{key}={value}"])
    assert cfg is not None


def test_links_and_named_files_exist():
    missing = []
    for page in PAGES:
        text = page.read_text()
        for target in re.findall(r"\]\(([^)#\s]+)\)", text):
            if "://" not in target and not (page.parent / target).exists():
                missing.append(f"{page.name}: link {target}")
        for name in re.findall(r"`([^`\s]+)`", text) + re.findall(r"\((tests/[^)\s,]+\.py)", text):
            name = name.split("::")[0].rstrip(".,;:")
            if name.startswith(PATH_PREFIXES) and not any(c in name for c in "<>*{$") and not (ROOT / name).exists():
                missing.append(f"{page.name}: {name}")
    assert not missing, "\n".join(missing)
