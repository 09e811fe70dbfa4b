"""What the benchmarks in tools/ share: their common options and their main (run, then a table or JSON)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser with the options every bench takes (model, env, device, dtype, threads, ...)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "conf/numberline.yaml"))
    p.add_argument("--env", default="numberline")
    p.add_argument("--model-path", default="tiny")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: see TINY_VLM.md's threads trap)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--override", nargs="*", default=[], help="extra dotted config overrides (rollout.top_p=0.9)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    return p


def main(args: argparse.Namespace, run: Callable[[argparse.Namespace], list[dict[str, Any]]],
         print_table: Callable[[list[dict[str, Any]], argparse.Namespace], None]) -> list[dict[str, Any]]:
    """Run the bench quietly, print its rows as a table (or ``--json``) and return them."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    rows = run(args)
    if args.json:
        print(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    else:
        print_table(rows, args)
    return rows


def print_rich(table: Any) -> None:
    """Print a rich table; 150 columns wide when stdout is not a terminal (logs, CI)."""
    from rich.console import Console

    Console(width=None if sys.stdout.isatty() else 150).print(table)
