"""Checkpoints: written to a temp dir then renamed, so a half-written one is never taken for good.

Layout of ``<out_dir>/checkpoints/update_000010/``:
  trainable.pt      every trainable parameter (LoRA or full) + the value head
  trainer_state.pt  optimizer, scheduler, update counter, RNG states, rollout state
  adapter/ | model/ the policy in Hugging Face format (model.path / policy.init_from accept it)
  sharded/          instead of trainable.pt, the optimizer state and the export, with
                    ``trainer.checkpoint_format=sharded``: every rank's shard of both
                    (:mod:`agentrl.policy.sharding`; ``agentrl export`` writes the full files from it)
  config.yaml       the resolved config
  meta.json         git SHA, command line, time, agentrl version
``<out_dir>/checkpoints/latest`` names the newest complete checkpoint.

:mod:`agentrl.training.resume` is fit's side of it: what a run writes after an update
and how it continues from that exactly.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

from agentrl.config import ConfigError
from agentrl.policy.sharding import SHARDED_DIR, read_sharded_weights

FORMAT_VERSION = 2
"""Bumped when the checkpoint layout changes; loading another version fails clearly."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; the previous one is untouched (the message names it)."""


def git_sha() -> str:
    """The source tree's commit (with -dirty when modified), or "unknown" outside git."""
    root = Path(__file__).resolve().parents[2]  # the checkout: agentrl/training/ -> agentrl/ -> root
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_meta(argv: list[str]) -> dict[str, Any]:
    from agentrl import __version__

    return {"git_sha": git_sha(), "argv": argv, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "agentrl_version": __version__, "format_version": FORMAT_VERSION}


def trainable_state(policy: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter that trains (adapters or all weights, and the value head), on CPU."""
    return {n: p.detach().cpu().clone() for n, p in policy.named_parameters() if p.requires_grad}


def save_checkpoint(
    ckpt_dir: Path,
    *,
    policy: Any,
    trainer_state: dict[str, Any],
    config_yaml: str,
    meta: dict[str, Any],
    export: bool = True,
    weights: dict[str, torch.Tensor] | None = None,
    prepared: Path | None = None,
) -> Path:
    """Write ``ckpt_dir`` atomically and point ``latest`` at it. Returns ``ckpt_dir``.

    ``weights``: the policy's full parameters, gathered beforehand from a sharded
    policy (:func:`agentrl.policy.sharding.full_weights`); None reads them from ``policy``.
    ``prepared``: a :func:`begin_checkpoint` folder that already holds the weights (every
    rank's shard files, ``trainer.checkpoint_format=sharded``): no trainable.pt is written.
    On any error (disk full, ...) the temp dir is removed and the previous
    checkpoint is left as it was; the error says so.
    """
    ckpt_dir = Path(ckpt_dir)
    tmp = begin_checkpoint(ckpt_dir) if prepared is None else prepared
    try:
        if prepared is None:
            if weights is None:
                trainable = trainable_state(policy)
            else:
                names = {n for n, p in policy.named_parameters() if p.requires_grad}
                trainable = {n: t for n, t in weights.items() if n in names}
            torch.save(trainable, tmp / "trainable.pt")
        torch.save(trainer_state, tmp / "trainer_state.pt")
        if export:
            export_hf(policy, tmp, weights)
        (tmp / "config.yaml").write_text(config_yaml)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        if ckpt_dir.exists():
            shutil.rmtree(ckpt_dir)
        os.replace(tmp, ckpt_dir)
        _write_atomic(ckpt_dir.parent / "latest", ckpt_dir.name)
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as RuntimeError
        shutil.rmtree(tmp, ignore_errors=True)
        prev = latest_checkpoint(ckpt_dir.parent)
        kept = f"the previous checkpoint {prev} is intact" if prev else "no earlier checkpoint exists"
        full = getattr(e, "errno", None) == errno.ENOSPC or os.strerror(errno.ENOSPC) in str(e)
        why = (f"the disk is full (no space left on the device of {ckpt_dir.parent}): free space, or keep fewer "
               f"checkpoints with trainer.keep_checkpoints; " if full else "")
        raise CheckpointWriteError(f"could not write checkpoint {ckpt_dir}: {why}{e}; {kept}") from e
    return ckpt_dir


def begin_checkpoint(ckpt_dir: Path) -> Path:
    """A fresh temp folder beside ``ckpt_dir`` to write it in; :func:`save_checkpoint` renames it into place."""
    ckpt_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = ckpt_dir.parent / f".tmp-{ckpt_dir.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def mark_best(ckpt: Path) -> None:
    """Point ``checkpoints/best`` (a relative symlink, replaced atomically) at ``ckpt``."""
    tmp = ckpt.parent / f".best.tmp-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    os.symlink(ckpt.name, tmp)
    os.replace(tmp, ckpt.parent / "best")


def best_checkpoint(ckpts: Path) -> Path | None:
    """The complete checkpoint ``ckpts/best`` points at, if any (``trainer.eval_every``)."""
    link = Path(ckpts) / "best"
    return link.resolve() if link.is_symlink() and (link / "trainer_state.pt").is_file() else None


def prune(ckpts: Path, keep: int | None) -> list[Path]:
    """Delete all but the newest ``keep`` complete checkpoints (never the one ``latest`` names, nor the best);
    returns them."""
    if keep is None:
        return []
    newest, best = latest_checkpoint(ckpts), best_checkpoint(ckpts)
    old = [c for c in complete_checkpoints(ckpts) if c != newest and c.resolve() != best][max(keep - 1, 0):]
    for c in old:
        shutil.rmtree(c, ignore_errors=True)
    return old


def clean_stale(ckpts: Path) -> list[Path]:
    """Remove what killed writes leave (``.tmp-*`` dirs and pointer temp files); call with the run dir locked."""
    stale = [p for p in Path(ckpts).glob(".tmp-*")] + list(Path(ckpts).glob(".latest.tmp-*")) + \
        list(Path(ckpts).glob(".best.tmp-*"))
    for p in stale:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    return stale


def export_hf(policy: Any, out: Path, weights: dict[str, torch.Tensor] | None = None) -> None:
    """The policy in Hugging Face format: ``adapter/`` (PEFT) or ``model/`` (full weights + processor).

    ``weights`` (full parameters by name, from a sharded policy) replace what the modules hold.
    """
    model = policy.model
    given: dict[str, Any] = {}
    head = policy.value_head.state_dict()
    if weights is not None:
        given = {"state_dict": {n.removeprefix("model."): t for n, t in weights.items() if n.startswith("model.")}}
        head = {n.removeprefix("value_head."): t for n, t in weights.items() if n.startswith("value_head.")}
    if hasattr(model, "peft_config"):
        model.save_pretrained(out / "adapter", **given)
    else:
        model.save_pretrained(out / "model", **given)
        policy.processor.save_pretrained(out / "model")
    torch.save(head, out / "value_head.pt")


EXPORT_MARK = "EXPORTED_FROM"
"""The file that marks a folder ``agentrl export`` wrote, which a later export may replace."""


def export_checkpoint(checkpoint: str, out: str | None = None) -> Path:
    """``agentrl export``: a checkpoint's full files (trainable.pt, adapter/ or model/, value_head.pt, config.yaml)
    in ``out`` [default: CHECKPOINT/export], written atomically; the way to share or convert a sharded one.

    The policy is built on the CPU from the checkpoint's own config.yaml.
    """
    from agentrl.config import load_config
    from agentrl.config.registry import Components

    ckpt = resolve_resume(checkpoint, "--checkpoint")
    if not (ckpt / "config.yaml").is_file():
        raise ConfigError(f"--checkpoint {ckpt}: no config.yaml there to build the model from")
    dest = ckpt / "export" if out is None else Path(out).expanduser()
    where = dest.resolve()
    if where == ckpt.resolve() or ckpt.resolve().is_relative_to(where):
        raise ConfigError(f"--out {out}: it holds the checkpoint {ckpt}, which the export would replace; "
                          f"pass another folder")
    if where.is_dir() and any(where.iterdir()) and not (where / EXPORT_MARK).is_file():
        raise ConfigError(f"--out {out}: {where} exists and is not an earlier export (no {EXPORT_MARK}); "
                          f"pass a new or empty folder, or remove it")
    cfg = load_config(ckpt / "config.yaml")
    policy = Components.resolve(cfg).make_policy(cfg)
    state = read_trainable(ckpt)
    load_trainable(policy, ckpt, value_head=False, state=state, all_trainable=False)
    tmp = begin_checkpoint(dest)
    try:
        torch.save(state, tmp / "trainable.pt")  # what the checkpoint holds, whole, and nothing else
        export_hf(policy, tmp)
        if not any(n.startswith("value_head.") for n in state):  # an sft checkpoint: no head was trained
            (tmp / "value_head.pt").unlink()
        shutil.copy(ckpt / "config.yaml", tmp / "config.yaml")
        (tmp / EXPORT_MARK).write_text(f"agentrl export of {ckpt.resolve()}\n")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except (OSError, RuntimeError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointWriteError(f"could not write the export {dest}: {e}") from e
    return dest


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def latest_checkpoint(ckpts: Path) -> Path | None:
    """The checkpoint ``ckpts/latest`` names if it is complete, else the newest complete ``update_*`` dir."""
    found = complete_checkpoints(ckpts)
    return found[0] if found else None


def complete_checkpoints(ckpts: Path) -> list[Path]:
    """Complete checkpoints in ``ckpts``, newest first: the one ``latest`` names, then ``update_*`` by number.

    A ``latest`` that is unreadable (binary bytes, a name with a slash) is ignored.
    """
    ckpts = Path(ckpts)
    named: list[Path] = []
    try:
        name = (ckpts / "latest").read_text().strip()
        if name and "/" not in name and "\0" not in name:
            named = [ckpts / name]
    except (OSError, UnicodeDecodeError):
        pass
    numbered = sorted(ckpts.glob("update_*"), reverse=True) if ckpts.is_dir() else []
    out = []
    for path in named + numbered:
        if path not in out and (path / "trainer_state.pt").is_file():
            out.append(path)
    return out


def resolve_resume(path: str, key: str = "trainer.resume") -> Path:
    """A checkpoint dir, or a run dir whose newest complete checkpoint is used (``key`` names the setting)."""
    p = Path(path).expanduser()
    if (p / "trainer_state.pt").is_file():
        return p
    for candidate in (p / "checkpoints", p):
        found = latest_checkpoint(candidate)
        if found is not None:
            return found
    raise ConfigError(
        f"{key}={path!r}: no complete checkpoint there (expected trainer_state.pt, or a run dir "
        f"with checkpoints/latest)"
    )


def read_trainable(ckpt: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's trainable weights by name, full tensors: its trainable.pt, or its shards."""
    path = Path(ckpt) / "trainable.pt"
    if not path.exists() and (Path(ckpt) / SHARDED_DIR).is_dir():  # trainer.checkpoint_format=sharded
        path = Path(ckpt) / SHARDED_DIR
    try:
        return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() \
            else read_sharded_weights(path)
    except Exception as e:  # missing, truncated or corrupt
        raise ConfigError(f"checkpoint file {path} does not load ({type(e).__name__}: {e}); "
                          f"it is damaged: use an earlier checkpoint") from None


def load_trainable(policy: torch.nn.Module, ckpt: Path, value_head: bool = True,
                   state: dict[str, torch.Tensor] | None = None, all_trainable: bool = True) -> None:
    """Load trainable.pt (or ``state``, already loaded from it) into ``policy``; every trainable parameter
    must be present with its shape.

    ``value_head=False`` (``policy.init_from``, eval) also accepts a checkpoint without the value
    head, such as sft's (the policy keeps its fresh one), and a policy without one (critic-free) ignores
    the checkpoint's. ``all_trainable=False`` (export, on a policy built without fit's reachability probe)
    lets trainable parameters the checkpoint lacks keep their base weights: fit froze and never saved them.
    """
    if state is None:
        state = read_trainable(ckpt)
    params = dict(policy.named_parameters())
    expected = {n for n, p in params.items() if p.requires_grad}
    if not all_trainable:
        expected &= set(state)
    if not value_head:  # a critic-free policy started from a checkpoint with a value head: the head is not used
        state = {n: t for n, t in state.items() if not n.startswith("value_head.") or n in params}
    if not value_head and not any(n.startswith("value_head.") for n in state):
        expected = {n for n in expected if not n.startswith("value_head.")}
    missing, unexpected = expected - set(state), set(state) - set(params)
    if missing or unexpected:
        raise ConfigError(
            f"checkpoint {ckpt} does not fit this config ({len(missing)} trainable parameters missing, "
            f"{len(unexpected)} unknown; e.g. {sorted(missing | unexpected)[:2]}): it was made with a different "
            f"model.path, model.finetune, LoRA or value-head setting; use that checkpoint's config.yaml"
        )
    for name, tensor in state.items():
        if params[name].shape != tensor.shape:
            raise ConfigError(f"checkpoint {ckpt}: {name} has shape {tuple(tensor.shape)}, "
                              f"this config builds {tuple(params[name].shape)}")
    if any(hasattr(p, "full_tensor") for p in params.values()):  # sharded (FSDP2): each rank cuts its shard
        from agentrl.policy.sharding import load_full_weights

        load_full_weights(policy, state)
        return
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor)


def load_trainer_state(ckpt: Path, mmap: bool = False) -> dict[str, Any]:
    """``ckpt``'s trainer_state.pt (update, optimizer, schedule, RNGs, envs); a ConfigError if another agentrl
    format wrote it."""
    state = torch.load(Path(ckpt) / "trainer_state.pt", map_location="cpu", weights_only=False, mmap=mmap)
    version = state.get("format_version")
    if version != FORMAT_VERSION:
        raise ConfigError(f"checkpoint {ckpt} has format version {version}; this agentrl reads {FORMAT_VERSION}")
    return state


# ---------------------------------------------------------------- one run per directory


class RunDirLock:
    """An exclusive lock on ``out_dir`` (``out_dir/.lock``, flock): a second run there stops naming the holder.

    The kernel drops the lock when its process dies, kill -9 included, so a
    stale lock file from a killed run is simply taken over.
    """

    def __init__(self, out_dir: Path, key: str = "trainer.out_dir") -> None:
        self.path, self.key = Path(out_dir) / ".lock", key
        self._file: Any = None

    def __enter__(self) -> RunDirLock:
        import fcntl
        import socket

        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")  # noqa: SIM115 (held open for the run)
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise ConfigError(f"{self.key}={self.path.parent} is in use by another run ({holder}); wait for it, "
                              f"stop it, or give this run another {self.key}") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%dT%H:%M:%S')}\n")
        f.flush()
        self._file = f
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            import fcntl

            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None
