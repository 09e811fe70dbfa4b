"""The schema of how a run learns: PPO, advantage estimation, rollouts, the trainer (Fabric, logging,
checkpoints) and the supervised warm start; each field with its one-line docstring."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agentrl.config.checks import ConfigError, check_choice, check_ranges, check_strategy


@dataclass
class PPOConfig:
    """Proximal policy optimisation with GAE."""

    gamma: float = 0.9
    """Discount factor."""
    gae_lambda: float = 0.95
    """GAE lambda."""
    clip: float = 0.1
    """Policy ratio clip epsilon."""
    value_clip: float | None = 0.1
    """Clip value updates to this distance from the old value (per update, in the returns' units: keep it off, None, for large rewards unless advantage.reward_scaling scales them); None turns value clipping off."""
    vf_coef: float = 0.5
    """Weight of the value loss."""
    epochs: int = 4
    """Passes over each rollout."""
    minibatch_size: int = 32
    """Samples per optimizer step, over all processes (gradients accumulated over micro-batches)."""
    micro_batch_size: int = 4
    """Samples per forward/backward; lower it to save memory, the result does not change."""
    lr: float = 1e-5
    """Adam learning rate at the start."""
    min_lr: float = 1e-9
    """Learning rate at the end of the cosine schedule."""
    value_lr: float | None = None
    """Learning rate of the value head; None uses ppo.lr."""
    vision_lr: float | None = None
    """Learning rate of the vision tower and projector (their LoRA adapters, or their weights in a full fine-tune), an optimizer group of its own; None trains them at ppo.lr with the rest."""
    max_grad_norm: float = 0.01
    """Clip the global gradient norm to this."""
    normalize_advantages: bool = True
    """Whiten advantages per batch (global statistics across ranks)."""
    target_kl: float | None = None
    """Stop the PPO epochs early when approx KL exceeds this; None never stops."""
    loss_type: str = "sequence"
    """Policy loss unit: "sequence" (the paper's: one ratio per answer from its lambda-weighted log-prob, averaged over answers) or "token" (one clipped ratio per answer token, weighted by its lambda weight, averaged over the minibatch's weighted tokens, as TRL's dapo/bnpo)."""

    def __post_init__(self) -> None:
        check_choice("ppo.loss_type", self.loss_type, ("sequence", "token"))
        check_ranges("ppo.", self, gamma="[0, 1]", gae_lambda="[0, 1]", clip="> 0", value_clip="None or > 0",
                      vf_coef=">= 0", epochs=">= 1", minibatch_size=">= 1", micro_batch_size=">= 1", lr="> 0",
                      min_lr=">= 0", value_lr="None or > 0", vision_lr="None or > 0", max_grad_norm="> 0", target_kl="None or > 0")
        if self.micro_batch_size < 1 or self.minibatch_size % self.micro_batch_size:
            raise ConfigError(f"ppo.minibatch_size ({self.minibatch_size}) must be a multiple of "
                              f"ppo.micro_batch_size ({self.micro_batch_size})")


@dataclass
class AdvantageConfig:
    """How rollouts become advantages."""

    estimator: str = "gae"
    """Advantage estimator by name: gae (GAE with the value head, ppo.gamma and ppo.gae_lambda), or the critic-free group estimators grpo, rloo, gigpo (need rollout.group_size >= 2; no value head is built), or "pkg.module:Class"."""
    scale_by_std: bool = True
    """grpo/gigpo: divide by the group's standard deviation; false is Dr. GRPO (mean-centred only)."""
    step_weight: float = 1.0
    """gigpo: weight of the step-level (anchor state) advantage added to the episode-level one."""
    reward_scaling: str = "none"
    """gae: "return_std" divides every reward by the running std of the discounted return (SB3 VecNormalize's norm_reward, no mean subtracted; statistics over all ranks, kept in checkpoints); "none" leaves rewards as the env gives them."""

    def __post_init__(self) -> None:
        check_ranges("advantage.", self, step_weight=">= 0")
        check_choice(f"advantage.reward_scaling (advantage.estimator={self.estimator})", self.reward_scaling,
                     ("none", "return_std") if self.estimator == "gae" else ("none",))


@dataclass
class RolloutConfig:
    """On-policy data collection."""

    name: str = "on_policy"
    """Rollout data module by name (on_policy: fresh data from the current policy every update) or "pkg.module:Class"."""
    steps_per_update: int = 64
    """Env steps collected per update, summed over all envs of all processes."""
    temperature: float = 0.2
    """Sampling temperature (also scales the logits the log-probs are taken from)."""
    top_p: float = 1.0
    """Nucleus sampling threshold."""
    max_new_tokens: int = 256
    """Longest generated answer."""
    group_size: int = 1
    """Envs per group: a group's G envs start every episode from the same state (seed, game file) and play it together; a rollout then holds whole groups (at least steps_per_update env steps; groups running at the budget finish). 1: no groups."""
    logprobs_from: str = "auto"
    """Old log-probs and values: "generate" (from the sampling pass itself), "forward" (a second, teacher-forced scoring pass, exactly the update's) or "auto" (generate at 32-true, forward under 16-bit autocast, where the two passes differ by ~1% in ratio)."""

    def __post_init__(self) -> None:
        check_ranges("rollout.", self, steps_per_update=">= 1", temperature="> 0", top_p="(0, 1]",
                      max_new_tokens=">= 1", group_size=">= 1")
        check_choice("rollout.logprobs_from", self.logprobs_from, ("auto", "generate", "forward"))


@dataclass
class TrainerConfig:
    """Lightning Fabric, logging and checkpoints."""

    max_updates: int = 20
    """PPO updates (collect + optimise) to run."""
    accelerator: str = "auto"
    """Fabric accelerator: auto, cpu, cuda."""
    devices: int = 1
    """Processes (GPUs) per node."""
    num_nodes: int = 1
    """Machines; launch with torchrun or SLURM (Fabric reads their environment)."""
    strategy: str = "auto"
    """Fabric strategy: auto, ddp, ddp_spawn or fsdp (FSDP2: weights, gradients and optimizer state sharded)."""
    precision: str = "32-true"
    """Fabric precision: 32-true, bf16-mixed or 16-mixed (autocast; what trains stays float32, the frozen base in model.dtype)."""
    out_dir: str = "runs/${env.name}"
    """Where events, checkpoints and the resolved config go."""
    log_every: int = 1
    """Write scalars every N updates."""
    image_log_every: int = 5
    """Log a few observation images with their generated text every N updates; 0 never."""
    max_bad_steps: int = 3
    """Stop the run after this many optimizer steps in a row with NaN/inf gradients (each is skipped)."""
    collective_timeout_s: float = 1800.0
    """Seconds ranks wait for each other after collecting; past it the run stops naming the slow rank."""
    startup_timeout_s: float = 600.0
    """Seconds every process has to start and join the process group (importing torch and transformers can take a minute on a loaded machine)."""
    checkpoint_every: int = 10
    """Checkpoint every N updates (and always at the end); 0 only at the end."""
    checkpoint_format: str = "full"
    """full: rank 0 writes the full trainable weights, optimizer state and the Hugging Face export (any strategy); sharded (trainer.strategy=fsdp only): every rank writes its own shard (torch.distributed.checkpoint, no full copy in any host's memory; needs a file system all ranks share), read back by resume, eval, policy.init_from and `agentrl export`."""
    keep_checkpoints: int | None = None
    """Keep only the newest N checkpoints (older ones are deleted after each save); None keeps all."""
    resume: str | None = None
    """Checkpoint dir (or run dir: its latest checkpoint) to continue from; "auto": out_dir's latest checkpoint if it has one, else a fresh start."""
    num_threads: int | None = None
    """torch CPU threads; None uses 1 per process when several share the CPU, else torch's default."""
    success_window: int = 200
    """Training success rate is over the last N episodes (the paper's metric)."""
    eval_every: int = 0
    """Held-out evaluation (eval split) every N updates and before the first, logged as eval/*; the best one's checkpoint is kept (checkpoints/best). 0: none."""
    eval_episodes: int = 32
    """Episodes per held-out evaluation during fit (split over the processes; the same episodes each time)."""
    eval_greedy: bool = True
    """Held-out evaluation during fit with greedy answers; false samples at rollout.temperature."""

    def __post_init__(self) -> None:
        if self.precision in ("bf16-true", "16-true", "bf16", "16", "half"):
            raise ConfigError(
                f"trainer.precision={self.precision} casts every weight, the LoRA adapters and the value head "
                f"included, to 16 bits, where Adam's small updates round away; use trainer.precision=bf16-mixed "
                f"with model.dtype=bfloat16 (the frozen base in bfloat16, trainable weights in float32)")
        check_choice("trainer.precision", self.precision, ("32-true", "bf16-mixed", "16-mixed", "32", "64-true"))
        check_ranges("trainer.", self, max_updates=">= 1", devices=">= 1", num_nodes=">= 1",
                      log_every=">= 1", image_log_every=">= 0", max_bad_steps=">= 1",
                      collective_timeout_s="> 0 seconds", startup_timeout_s="> 0 seconds",
                      checkpoint_every=">= 0", num_threads="None or >= 1", success_window=">= 1",
                      keep_checkpoints="None or >= 1", eval_every=">= 0", eval_episodes=">= 1")
        check_strategy(self.strategy, self.devices * self.num_nodes)
        check_choice("trainer.checkpoint_format", self.checkpoint_format, ("full", "sharded"))
        if self.checkpoint_format == "sharded" and self.strategy != "fsdp":
            raise ConfigError(f"trainer.checkpoint_format=sharded writes each rank's shard of an FSDP model, and "
                              f"trainer.strategy is {self.strategy}: use trainer.strategy=fsdp, or "
                              f"trainer.checkpoint_format=full")
        size = max((len(part.encode("utf-8", "surrogatepass")) for part in Path(self.out_dir).parts), default=0)
        if "${" not in self.out_dir and (size > 255 or "\0" in self.out_dir):  # left alone while ${...} remains
            raise ConfigError(f"trainer.out_dir must have no NUL and path components of at most 255 bytes (the "
                              f"file system limit), got {self.out_dir!r} (longest component {size} bytes)")


@dataclass
class SFTConfig:
    """Supervised warm start (`agentrl sft`): teacher-forced loss on expert answers only."""

    data: str = "expert"
    """"expert" (the env's expert along mixed expert/random trajectories) or a JSONL file (format in agentrl/data/sft.py)."""
    examples: int = 512
    """Expert examples to generate (data=expert)."""
    explore: float = 0.5
    """Probability of stepping with a random legal action while generating expert data, so states are diverse."""
    noise: float = 0.0
    """Probability of replacing the labelled expert action with a random legal one (a deliberately weak start)."""
    expert: str = "planner"
    """Who labels expert data (data=expert): "planner" (the env's own expert; for ALFWorld alfworld's handcoded planner, which keeps a memory of the whole episode and reads the engine's facts) or "search" (ALFWorld only: the searching expert, which acts on what the prompt shows and the last 3 steps; see docs/environments.md)."""
    max_examples: int | None = None
    """Use at most this many examples (either source); None uses all."""
    epochs: int = 3
    """Passes over the examples."""
    perception_epochs: int = 0
    """Warm-up passes first: the image alone as prompt, the answer's fields before "thoughts" as target."""
    lr: float = 1e-4
    """Adam learning rate of the language model (cosine to lr / 10)."""
    vision_lr: float | None = None
    """Learning rate of the vision tower and projector; None uses sft.lr (a random-init vision path needs <= 1e-4)."""
    batch_size: int = 16
    """Examples per optimizer step."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this."""

    def __post_init__(self) -> None:
        if self.data != "expert" and not self.data.endswith(".jsonl"):
            raise ConfigError(f"sft.data must be 'expert' or a .jsonl file, got {self.data!r}")
        check_choice("sft.expert", self.expert, ("planner", "search"))
        if self.expert != "planner" and self.data != "expert":
            raise ConfigError(f"sft.expert={self.expert} labels expert data (sft.data=expert); with "
                              f"sft.data={self.data} the labels come from the file: drop sft.expert")
        check_ranges("sft.", self, examples=">= 1", explore="[0, 1]", noise="[0, 1]",
                      max_examples="None or >= 1", epochs=">= 1", perception_epochs=">= 0", lr="> 0",
                      vision_lr="None or > 0", batch_size=">= 1", max_grad_norm="> 0")
