"""The schema: nested dataclasses, a one-line docstring under each field, cross-field rules in
``__post_init__`` (each error names the dotted key)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentrl.config.checks import ConfigError, check_choice, check_groups, check_ranges, check_strategy


@dataclass
class LoraConfig:
    """Low-rank adapters through PEFT."""

    r: int = 128
    """Adapter rank."""
    alpha: int = 256
    """Adapter scaling numerator (scale = alpha / r)."""
    dropout: float = 0.05
    """Dropout on the adapter input."""
    target_modules: str = "all-linear"
    """"all-linear", a comma list of module names (q_proj,v_proj), or a regex over full module names."""
    vision_tower: bool = True
    """Also adapt the vision tower and projector (the paper does)."""


@dataclass
class ModelConfig:
    """Which VLM to load and how."""

    path: str = "tiny"
    """Local Hugging Face image-text-to-text checkpoint, or "tiny" for the built-in offline model."""
    dtype: str = "float32"
    """Weights dtype: float32, bfloat16 or float16."""
    attn_implementation: str | None = None
    """Attention kernel (eager, sdpa, flash_attention_2); None lets transformers choose."""
    finetune: str = "lora"
    """"lora" trains adapters + value head; "full" trains every weight (tiny models)."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """Adapter settings, used when finetune is lora."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward to save memory."""
    image_size: int | None = None
    """Resize observations to this square size before the processor; None keeps the env's size."""

    def __post_init__(self) -> None:
        check_choice("model.dtype", self.dtype, ("float32", "bfloat16", "float16"))
        check_choice("model.finetune", self.finetune, ("lora", "full"))
        check_ranges("model.", self, image_size="None or >= 1")
        check_ranges("model.lora.", self.lora, r=">= 1", alpha="> 0", dropout="[0, 1)")


@dataclass
class EnvConfig:
    """The environments rollouts are collected from."""

    name: str = "numberline"
    """Env by name (numberline, ezpoints, points24, blackjack, alfworld) or "pkg.module:Class"."""
    num_envs: int = 4
    """Environments stepped together per process; one batched generate serves them all."""
    vector: str = "sync"
    """"sync" steps envs in this process, "async" in worker processes."""
    options: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for the game (max_position, target, face_cards_as_10, ...)."""
    max_episode_steps: int | None = None
    """Truncate episodes after this many steps; None uses the game's own limit."""
    image: str = "auto"
    """Observation image: auto (the game's own), none (text only), scene (drawn from text), thor (ALFWorld 3D)."""
    data_path: str | None = None
    """ALFWorld game files; None uses $ALFWORLD_DATA or generates a small offline set."""
    step_timeout_s: float | None = 300.0
    """vector=async: a worker that gives no answer to a reset or step within this many seconds is killed and restarted, its episode dropped and counted (as a dead one); None waits forever."""

    def __post_init__(self) -> None:
        check_ranges("env.", self, num_envs=">= 1", max_episode_steps="None or >= 1",
                     step_timeout_s="None or > 0 seconds")
        check_choice("env.vector", self.vector, ("sync", "async"))
        check_choice("env.image", self.image, ("auto", "none", "scene", "thor"))


@dataclass
class PromptConfig:
    """How observations become prompts."""

    template: str = "auto"
    """Prompt template by name, or "auto" for the env's own."""
    cot: bool = True
    """Ask for reasoning ("thoughts") before the action; false is the paper's no-CoT ablation."""
    text_state: bool = False
    """Also write the text state (numbers, formula) into the prompt, not only the image."""
    history: int = 0
    """Earlier steps of the current episode shown in the prompt: the last K (state, action) pairs as text; 0 shows the current observation only."""
    history_images: int = 0
    """Image envs: the last M of those K steps also show the image the agent saw then (M <= prompt.history; each costs its image tokens; needs a model whose processor takes several images per prompt)."""
    max_image_tokens: int | None = None
    """The most image tokens one prompt may hold: earlier steps' images that would pass it are left out, oldest first (tokens and pixel values together; the step stays as text); None: no budget."""
    image_position: str = "first"
    """Where the image goes in the user turn: "first" (as the paper's LLaVA prompts; the tiny model reads it best there), "after_task" (after the task description) or "last"; the text before it is what a batch's prompts share (policy.share_prefix)."""

    def __post_init__(self) -> None:
        check_ranges("prompt.", self, history=">= 0", history_images=">= 0", max_image_tokens="None or >= 1")
        if self.history_images > self.history:
            raise ConfigError(f"prompt.history_images={self.history_images} shows images of earlier steps the prompt "
                              f"lists, and prompt.history={self.history} lists fewer: set prompt.history>="
                              f"{self.history_images} or lower prompt.history_images")
        if self.image_position not in IMAGE_POSITIONS:
            raise ConfigError(f"prompt.image_position must be one of {', '.join(IMAGE_POSITIONS)}, "
                              f"got {self.image_position!r}")


IMAGE_POSITIONS = ("first", "after_task", "last")


@dataclass
class ParserConfig:
    """How generated text becomes a legal action."""

    name: str = "auto"
    """Action parser by name (json, admissible), "auto" for the env's own, or "pkg.module:Class"."""
    options: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the parser's constructor (admissible: min_overlap)."""
    failure_penalty: float = 0.0
    """Reward added when the text names no legal action (a random legal action is taken instead)."""

    def __post_init__(self) -> None:
        check_ranges("parser.", self, failure_penalty="finite")


@dataclass
class PolicyConfig:
    """The policy's log-probability, value head and regularisers."""

    name: str = "actor_critic"
    """Policy module by name (actor_critic: the VLM with a value head) or "pkg.module:Class"."""
    thought_coef: float = 0.5
    """Lambda: log pi = thought_coef * sum log p(CoT tokens) + sum log p(action tokens)."""
    value_hidden: list[int] = field(default_factory=lambda: [1024, 512])
    """Hidden widths of the value head MLP."""
    init_from: str | None = None
    """Checkpoint dir (from sft or fit) whose adapters/weights start the policy."""
    kl_coef: float = 0.0
    """Penalty on KL to the reference policy (adapters disabled); 0 turns it off."""
    entropy_coef: float = 0.0
    """Bonus on token entropy of the generated text; 0 turns it off (as the paper)."""
    share_prefix: bool = True
    """Run the prompt prefix a batch shares once (generate, scoring, training); LLaVA, LLaVA-NeXT and Idefics3; Qwen2-VL/2.5-VL run unshared (their 3-D rotary positions), with a warning."""

    def __post_init__(self) -> None:
        check_ranges("policy.", self, thought_coef="[0, 1]", value_hidden="all >= 1", kl_coef=">= 0",
                      entropy_coef=">= 0")


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
                      min_lr=">= 0", value_lr="None or > 0", max_grad_norm="> 0", target_kl="None or > 0")
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
    """"expert" (the env's expert along mixed expert/random trajectories) or a JSONL file (format in agentrl/sft.py)."""
    examples: int = 512
    """Expert examples to generate (data=expert)."""
    explore: float = 0.5
    """Probability of stepping with a random legal action while generating expert data, so states are diverse."""
    noise: float = 0.0
    """Probability of replacing the labelled expert action with a random legal one (a deliberately weak start)."""
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
        check_ranges("sft.", self, examples=">= 1", explore="[0, 1]", noise="[0, 1]",
                      max_examples="None or >= 1", epochs=">= 1", perception_epochs=">= 0", lr="> 0",
                      vision_lr="None or > 0", batch_size=">= 1", max_grad_norm="> 0")


@dataclass
class Config:
    """A complete agentrl run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """The VLM."""
    env: EnvConfig = field(default_factory=EnvConfig)
    """The environments."""
    prompt: PromptConfig = field(default_factory=PromptConfig)
    """Observation to prompt."""
    parser: ParserConfig = field(default_factory=ParserConfig)
    """Text to action."""
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    """Log-probability and value head."""
    ppo: PPOConfig = field(default_factory=PPOConfig)
    """The optimiser of the policy."""
    advantage: AdvantageConfig = field(default_factory=AdvantageConfig)
    """Advantage estimation."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """Data collection."""
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    """Execution, logging, checkpoints."""
    sft: SFTConfig = field(default_factory=SFTConfig)
    """Supervised warm start (agentrl sft)."""
    seed: int = 0
    """Seeds envs, sampling and initialisation."""

    def __post_init__(self) -> None:
        check_ranges("", self, seed=f"[0, {2**32 - 1}]")
        if self.rollout.steps_per_update % self.env.num_envs:
            raise ConfigError(f"rollout.steps_per_update ({self.rollout.steps_per_update}) must be a multiple of "
                              f"env.num_envs ({self.env.num_envs})")
        check_groups(self.advantage.estimator, self.rollout.group_size, self.env.num_envs)
        if self.ppo.minibatch_size > self.rollout.steps_per_update:
            raise ConfigError(f"ppo.minibatch_size ({self.ppo.minibatch_size}) exceeds rollout.steps_per_update "
                              f"({self.rollout.steps_per_update}); lower it or collect more steps")

    @property
    def logprobs_from(self) -> str:
        """``rollout.logprobs_from`` with "auto" resolved by ``trainer.precision``.

        Measured on the tiny model (bf16-mixed, 48-token answers): mean |ratio - 1| before the first
        step is 0.6-1.4% from the sampling pass and exactly 0 from a scoring forward.
        """
        if self.rollout.logprobs_from != "auto":
            return self.rollout.logprobs_from
        return "forward" if self.trainer.precision in ("bf16-mixed", "16-mixed") else "generate"

    def steps_per_env(self, world_size: int = 1) -> int:
        """Env steps each environment takes per update when ``world_size`` processes share the work."""
        self.check_world_size(world_size)
        return self.rollout.steps_per_update // (world_size * self.env.num_envs)

    def check_world_size(self, world_size: int) -> None:
        """The global sizes must split evenly over ``world_size`` processes."""
        if self.rollout.steps_per_update % (world_size * self.env.num_envs):
            raise ConfigError(f"rollout.steps_per_update ({self.rollout.steps_per_update}) must be a multiple of "
                              f"trainer.devices x env.num_envs ({world_size} x {self.env.num_envs})")
        if self.ppo.minibatch_size % world_size:
            raise ConfigError(f"ppo.minibatch_size ({self.ppo.minibatch_size}) must be a multiple of "
                              f"trainer.devices ({world_size})")
