"""The `agentrl` command: fit, eval, sft, sweep, play, make-tiny-model, alfworld-gen.

Config errors exit with status 2 and one line naming the dotted key and where
it came from; engines import lazily so `--help` and config checks are instant.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

from agentrl.config import ConfigError, describe_keys, load_config, to_yaml
from agentrl.policy.tiny.families import FAMILIES


def _keys_epilog(cfg: Any = None, source: str = "") -> str:
    """Every config key with its doc and the code's default; with ``cfg``, also its value where ``source`` (the
    config file and the overrides) changes it."""
    if cfg is None:
        return _defaults_epilog()
    from agentrl.config.loading import key_values

    values, defaults = key_values(cfg), key_values(load_config())  # both resolved: runs/${env.name} alike
    rows = describe_keys()
    width = max(len(k) for k, _, _ in rows)
    lines = ["config keys (set in YAML or as dotted overrides, e.g. ppo.clip=0.2 prompt.cot=false); where",
             f"{source} sets a value other than the code's default, it follows: [default: D; {source}: V]"]
    for key, default, doc in rows:
        value = f"; {source}: {values[key]}" if values[key] != defaults[key] else ""
        lines.append(f"  {key:<{width}}  {doc} [default: {default}{value}]")
    return "\n".join(lines)


@cache
def _defaults_epilog() -> str:
    rows = describe_keys()
    width = max(len(k) for k, _, _ in rows)
    lines = ["config keys (set in YAML or as dotted overrides, e.g. ppo.clip=0.2 prompt.cot=false):"]
    for key, default, doc in rows:
        lines.append(f"  {key:<{width}}  {doc} [default: {default}]")
    return "\n".join(lines)


def _add_config_args(p: argparse.ArgumentParser, show_prompt: str | None = None) -> None:
    p.add_argument("-c", "--config", help="YAML config (may name 'base: other.yaml')")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted overrides, applied last (they may sit anywhere among the options)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    if show_prompt:
        p.add_argument("--show-prompt", action="store_const", const=show_prompt, default=None,
                       help=f"print the prompt of each env's first step ({show_prompt} split) as the model "
                            "receives it, where the image goes and its size, and exit")


def _parsers(cfg: Any = None, source: str = "") -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The root parser and each command's own; with ``cfg``, the keys' help shows its values (see _keys_epilog)."""
    fmt = argparse.RawDescriptionHelpFormatter
    root = argparse.ArgumentParser(prog="agentrl", description="Fine-tune VLMs as decision-making agents with PPO.")
    sub = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    epilog = _keys_epilog(cfg, source)

    p = sub.add_parser("fit", help="train with PPO", formatter_class=fmt, epilog=epilog,
                       description="Collect on-policy rollouts and update the VLM and value head with PPO.")
    _add_config_args(p, show_prompt="train")

    p = sub.add_parser("eval", help="held-out evaluation of a checkpoint", formatter_class=fmt, epilog=epilog)
    _add_config_args(p, show_prompt="eval")
    p.add_argument("--checkpoint", help="checkpoint dir written by fit or sft")
    p.add_argument("--episodes", type=int, default=100, help="held-out episodes to run")
    p.add_argument("--greedy", action="store_true", help="arg-max decoding instead of sampling")
    p.add_argument("--out", help="JSON file to write, replacing one there [default: CHECKPOINT/eval-eval-greedy.json "
                   "or eval-eval-sampled.json; if taken, the first free of ...-2.json, ...-3.json: never replaced]")

    p = sub.add_parser("export", help="write a checkpoint's full weights and Hugging Face folder",
                       description="Full trainable.pt, adapter/ (LoRA) or model/ (full fine-tuning) and value_head.pt of "
                                   "a checkpoint, also one written sharded (trainer.checkpoint_format=sharded).")
    p.add_argument("--checkpoint", required=True, help="checkpoint dir (or run dir: its latest checkpoint)")
    p.add_argument("--out", help="folder to write, replacing one there [default: CHECKPOINT/export]")

    p = sub.add_parser("sft", help="supervised warm start from expert data", formatter_class=fmt, epilog=epilog)
    _add_config_args(p)

    p = sub.add_parser("sweep", help="run a grid of overrides over seeds", formatter_class=fmt, epilog=epilog)
    _add_config_args(p)
    p.add_argument("--grid", action="append", default=[], metavar="key=v1,v2",
                   help="values to sweep (repeat for a product; lists as [1,2], quote strings that hold commas)")
    p.add_argument("--seeds", default="0", help="comma list of seeds")
    p.add_argument("--parallel", type=int, default=1, metavar="N", help="runs at once (each gets 1 torch thread)")
    p.add_argument("--out", help="sweep dir [default: runs/sweep-<config stem>]")
    p.add_argument("--force", action="store_true", help="rerun combinations that already finished")

    p = sub.add_parser("play", help="play a game by hand in the terminal")
    p.add_argument("game", help="numberline, ezpoints, points24 or blackjack")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--option", action="append", default=[], metavar="key=value", help="game option")

    p = sub.add_parser("make-tiny-model", help="build the tiny offline VLM into a directory")
    p.add_argument("out", help="directory to write (a Hugging Face checkpoint)")
    p.add_argument("--size", choices=("tiny", "0.5b", "2b"), default="tiny",
                   help="tiny: the CPU model; 0.5b: a ~0.45B random-weight LLaVA (float32) for CPU memory checks; "
                        "2b: a ~1.6B one (bf16) for GPU benchmarks")
    p.add_argument("--family", choices=FAMILIES, default="llava",
                   help="model family: its stock model and processor classes at the same tiny widths")

    p = sub.add_parser("alfworld-gen", help="author ALFWorld games offline")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--per-type", type=int, default=10, help="games per task type and split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-receptacles", type=_at_least(3), default=None, metavar="N",
                   help="small rooms: keep the receptacles the task needs and random others up to N (>= 3); "
                        "default: whole rooms")
    p.add_argument("--max-distractors", type=_at_least(0), default=None, metavar="M",
                   help="at most M objects that are not targets; default: no limit")
    return root, dict(sub.choices)


def _at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``low``."""
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value
    return parse


def _parse_value(text: str) -> object:
    """'3' -> 3, '0.5' -> 0.5, 'true' -> True, anything else stays a string."""
    from omegaconf import OmegaConf

    return OmegaConf.from_dotlist([f"v={text}"]).v


def _run(args: argparse.Namespace) -> int:
    if args.command == "play":
        from agentrl.commands.play import run_play

        options = {}
        for item in args.option:
            if "=" not in item:
                raise ConfigError(f"--option {item!r} is not key=value (for example max_position=8)")
            key, value = item.split("=", 1)
            options[key] = _parse_value(value)
        return run_play(args.game, args.seed, options)
    if args.command == "make-tiny-model":
        from agentrl.policy.tiny.build import make_tiny_model

        return make_tiny_model(args.out, args.size, args.family)
    if args.command == "export":
        from agentrl.training.checkpoint import export_checkpoint

        print(f"exported to {export_checkpoint(args.checkpoint, args.out)}")
        return 0
    if args.command == "alfworld-gen":
        try:
            from agentrl.envs.alfworld.gen import main as gen_main
        except ModuleNotFoundError as e:
            raise ConfigError(f"alfworld-gen needs the ALFWorld engine: pip install 'agentrl[alfworld]' ({e})") from None
        return gen_main(args.out, args.per_type, args.seed, max_receptacles=args.max_receptacles,
                        max_distractors=args.max_distractors)

    if args.command == "sweep" and not args.print_config:  # it checks each combination with its grid values
        return _sweep(args)  # (the overrides alone may need them: rollout.group_size=4 with an estimator grid)
    cfg = load_config(args.config, args.overrides)
    if args.command == "eval" and args.checkpoint:
        cfg = _checkpoint_model(cfg, args)
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    if getattr(args, "show_prompt", None):
        return _show_prompts(cfg, args.show_prompt)
    commands: dict[str, Callable[[], int]] = {
        "fit": lambda: _fit(cfg, args),
        "eval": lambda: _eval(cfg, args),
        "sft": lambda: _sft(cfg, args),
        "sweep": lambda: _sweep(args),
    }
    return commands[args.command]()


def _fit(cfg, args: argparse.Namespace) -> int:
    from agentrl.commands.fit import fit
    from agentrl.training.checkpoint import CheckpointWriteError
    from agentrl.training.distributed import SlowRankError
    from agentrl.training.learner import NonFiniteError
    from agentrl.training.signals import Preempted

    try:
        fit(cfg, argv=sys.argv)
    except (NonFiniteError, SlowRankError, CheckpointWriteError) as e:
        print(f"agentrl fit: stopped: {e}", file=sys.stderr)
        return 1
    except Preempted as e:  # SIGTERM / SIGINT: checkpointed, 143 / 130 as a killed process would exit
        print(f"agentrl fit: stopped: {e}", file=sys.stderr)
        return e.exit_code
    return 0


def _show_prompts(cfg: Any, split: str) -> int:
    """Print each env's first prompt as the model receives it: the chat-templated text with its image marker,
    then what the marker becomes (image tokens, pixel size). Builds the processor, not the model."""
    from types import SimpleNamespace

    from transformers import AutoConfig

    from agentrl.config.registry import Components
    from agentrl.policy.loading import resolve_model_path
    from agentrl.policy.processors import load_processor
    from agentrl.prompting.batching import PromptBatcher

    parts = Components.resolve(cfg)
    path = resolve_model_path(cfg.model.path)
    processor = load_processor(path, cfg.model.path)
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ConfigError(f"model.path {cfg.model.path!r} has no model config: {e}") from None
    # the policy's own prompt encoding; it reads only the model's config
    batcher = PromptBatcher(SimpleNamespace(config=config), processor, image_size=cfg.model.image_size)
    template = parts.make_template(cfg)
    marker = getattr(processor, "image_token", None) or "<image>"
    marker_id = processor.tokenizer.convert_tokens_to_ids(marker)
    envs = parts.make_env(cfg, split)
    try:
        observations = envs.reset(cfg.seed)  # as rank 0 of fit (eval) starts
    finally:
        envs.close()
    for i, obs in enumerate(observations):
        messages = template.messages(obs, ())
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        prompt = batcher.encode(messages, obs.image)
        print(f"===== env {i} of {len(observations)} ({cfg.env.name}, {split} split, reset with seed {cfg.seed}): "
              f"{prompt['input_ids'].shape[-1]} tokens =====")
        print(text, end="" if text.endswith("\n") else "\n")
        print(f"----- end of the text ({len(text)} characters, ending {text[-16:]!r})")
        if obs.image is None:
            print("----- no image: text only")
            continue
        h, w = obs.image.shape[:2]
        size = f"resized to {cfg.model.image_size}x{cfg.model.image_size} (model.image_size)" \
            if cfg.model.image_size else "as is (model.image_size: null)"
        line = next((n for n, t in enumerate(text.splitlines(), 1) if marker in t), None)
        pixels = "x".join(map(str, prompt["pixel_values"].shape)) if "pixel_values" in prompt else "?"
        print(f"----- image: {marker} on line {line} becomes {int((prompt['input_ids'] == marker_id).sum())} image "
              f"tokens; the env's {w}x{h} RGB picture goes to the processor {size}: pixel_values {pixels}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from agentrl.commands.sweep import run_sweep

    return run_sweep(args.config, args.overrides, args.grid, args.seeds, parallel=args.parallel, out=args.out,
                     force=args.force)


def _checkpoint_model(cfg, args: argparse.Namespace):
    """``cfg`` with the model settings the checkpoint was made with (its config.yaml), except the ``model.*``
    keys given on the command line: eval need not be told the model, finetune mode or LoRA shape again."""
    from dataclasses import replace

    from omegaconf import OmegaConf

    from agentrl.config import ModelConfig
    from agentrl.training.checkpoint import resolve_resume

    try:
        saved = resolve_resume(args.checkpoint, "--checkpoint") / "config.yaml"
    except ConfigError:  # eval itself says what is wrong with it (--print-config needs no checkpoint)
        return cfg
    if not saved.is_file():
        return cfg
    try:
        model = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig),
                                                    OmegaConf.load(saved).get("model", {})))
    except Exception as e:  # a damaged or foreign config.yaml: say so, use the command line's settings
        print(f"eval: could not read the model settings of {saved} ({type(e).__name__}); using the config's",
              file=sys.stderr)
        return cfg
    given = [o.split("=", 1)[0] for o in args.overrides if o.startswith("model.")]
    for key in given:  # the command line wins over the checkpoint
        *parents, leaf = key.split(".")[1:]
        src, dst = cfg.model, model
        for name in parents:
            src, dst = getattr(src, name), getattr(dst, name)
        setattr(dst, leaf, getattr(src, leaf))
    if model != cfg.model:
        print(f"eval: model settings from {saved} (model.path={model.path}, model.finetune={model.finetune}"
              f"{', LoRA r=' + str(model.lora.r) if model.finetune == 'lora' else ''})", file=sys.stderr)
    return replace(cfg, model=model)


def _eval(cfg, args: argparse.Namespace) -> int:
    from agentrl.commands.evaluate import evaluate

    evaluate(cfg, args.checkpoint, args.episodes, greedy=args.greedy, out=args.out)
    return 0


def _sft(cfg, args: argparse.Namespace) -> int:
    from agentrl.commands.sft import sft

    sft(cfg, argv=sys.argv)
    return 0


OVERRIDE_COMMANDS = ("fit", "eval", "sft", "sweep")
"""The commands that take a config and dotted overrides."""


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Like ``parse_args``, but a command's ``key=value`` overrides may sit anywhere among its options.

    ``parse_intermixed_args`` cannot run on the root (its subcommand is a positional that takes the rest), so
    the command's own parser does it, on what follows the command's name.
    """
    root, commands = _parsers()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in OVERRIDE_COMMANDS:
        if any(a in HELP for a in argv[1:]):  # with -c, the help shows that config's values
            root, commands = _parsers(*_help_config(commands[argv[0]], argv[1:]))
        return commands[argv[0]].parse_intermixed_args(argv[1:], argparse.Namespace(command=argv[0]))
    return root.parse_args(argv)


HELP = ("-h", "--help")


def _help_config(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[Any, str]:
    """(the config that ``-c`` and the overrides on the command line resolve to, where it came from), or
    (None, "") without ``-c``. A config that does not load raises its :class:`ConfigError`."""
    with contextlib.redirect_stderr(io.StringIO()):  # a line that does not parse gets the plain help
        try:
            args, _ = parser.parse_known_intermixed_args([a for a in argv if a not in HELP])
        except SystemExit:
            return None, ""
    if not args.config:
        return None, ""
    source = args.config + (" + overrides" if args.overrides else "")
    return load_config(args.config, args.overrides), source


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parse_args(argv)
        return _run(args)
    except ConfigError as e:
        print(f"agentrl: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("agentrl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
