"""The schema: nested dataclasses, a one-line docstring under each field, cross-field rules in
``__post_init__`` (each error names the dotted key).

Here the run (:class:`Config`) and what it acts with: the model, the envs, the prompt, the parser and the
policy; how it learns (ppo, advantage, rollout, trainer, sft) is in :mod:`agentrl.config.training`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agentrl.config.checks import ConfigError, check_choice, check_groups, check_ranges
from agentrl.config.training import AdvantageConfig, PPOConfig, RolloutConfig, SFTConfig, TrainerConfig


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
    """Bonus on the policy's entropy: of the generated tokens (generate head) or of the candidate distribution (score head); 0 turns it off (as the paper)."""
    share_prefix: bool = True
    """Run the prompt prefix a batch shares once (generate, scoring, training); LLaVA, LLaVA-NeXT and Idefics3; Qwen2-VL/2.5-VL run unshared (their 3-D rotary positions), with a warning."""
    action_head: str = "generate"
    """How the policy picks an action: "generate" (write the answer token by token; a parser maps it to a legal action) or "score" (a softmax over the step's legal actions of each one's normalised log-likelihood as the answer after the prompt, TWOSOME / GLAM; needs prompt.cot=false)."""
    normalization: str = "word"
    """action_head=score: a candidate's log-likelihood divided by its action's words ("word", TWOSOME's released scripts), by its scored tokens ("token"), or not ("sum", which favours short actions)."""

    def __post_init__(self) -> None:
        check_ranges("policy.", self, thought_coef="[0, 1]", value_hidden="all >= 1", kl_coef=">= 0",
                      entropy_coef=">= 0")
        check_choice("policy.action_head", self.action_head, ("generate", "score"))
        check_choice("policy.normalization", self.normalization, ("word", "token", "sum"))


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
        if self.policy.action_head == "score":
            if self.prompt.cot:
                raise ConfigError("policy.action_head=score scores the legal actions as the whole answer, so there is "
                                  "no thought to write first (thinking, then scoring after the thought, is not "
                                  "supported); set prompt.cot=false, or use policy.action_head=generate for CoT")
            if self.model.gradient_checkpointing:
                raise ConfigError("policy.action_head=score scores every candidate on its prompt's key/value cache, "
                                  "which activation checkpointing drops in training; set "
                                  "model.gradient_checkpointing=false, or use policy.action_head=generate")
            if self.ppo.loss_type == "token":
                raise ConfigError("ppo.loss_type=token needs generated tokens; with policy.action_head=score the "
                                  "policy's probability is one per action: use ppo.loss_type=sequence")
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
