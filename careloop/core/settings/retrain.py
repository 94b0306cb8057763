"""The realignment's settings: KTO→DPO, checkpoint choice, canary analysis; and `careloop demo`'s."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class RetrainSettings(BaseModel):
    """KTO→DPO realignment, checkpoint selection, canary analysis."""

    max_cycles: int = Field(default=5, description="KTO→DPO cycles per run at most.")
    # Recipe: docs/recipe.md.
    kto_learning_rate: float = Field(default=3e-4, description="KTO learning rate (KTO carries the gain).")
    dpo_learning_rate: float = Field(default=2e-5, description=(
        "DPO learning rate (about 10x lower than KTO, on prompt-tied pairs only; docs/recipe.md)."))
    lora_r: int = Field(default=16, description="LoRA rank.")
    lora_alpha: int = Field(default=32, description="LoRA alpha (scaling).")
    lora_dropout: float = Field(default=0.05, description="LoRA dropout.")
    lora_target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="Modules the LoRA adapter wraps.",
    )
    batch_size: int = Field(default=8, description="Training batch size.")
    max_length: int = Field(default=128, description=(
        "Prompt + completion tokens; completions are cut to max_completion_words."))
    max_prompt_length: int = Field(default=192, description="Longest prompt in tokens.")
    seed_mix: int = Field(default=200, description="Vendored examples mixed into each KTO set.")
    max_traffic_examples: int = Field(default=1000, description="Judged traffic exchanges a run trains on at most.")
    validation_size: int = Field(default=60, description="Validation prompts each checkpoint is evaluated on.")
    validation_borderline: int = Field(default=30, description=(
        "Risky-sounding benign prompts (borderline set) held out for validation, chosen by a hash, so checkpoint "
        "choice and the DPO decision see over-refusal; the rest are trained on."))
    validation_max_tokens: int = Field(default=96, description="Reply length in tokens during validation.")
    err_reject: float = Field(default=0.5, description="Reject a checkpoint whose validation ERR is above this.")
    register_confidence: float = Field(default=0.9, description=(
        "A checkpoint is registered only when a paired bootstrap over the validation prompts gives it at least "
        "this probability of a higher Overall than the model serving now (careloop/retrain/stats.py)."))
    dpo_min_ratio: float = Field(default=0.3, description=(
        "From cycle 2: a DPO set under this share of the KTO set is \"DPO dataset collapse\"."))
    dpo_min_pairs: int = Field(default=8, description="Fewer pairs than this: no DPO in any cycle.")
    flat_cycles: int = Field(default=3, description="Stop after this many cycles without a gain.")
    flat_epsilon: float = Field(default=0.005, description="Overall gain below this counts as no gain.")
    alphas_report: list[float] = Field(default_factory=lambda: [0.4, 0.6, 0.8], description=(
        "α values the run report gives the Overall Metric at."))
    # Canary analysis.
    canary_steps: list[float] = Field(default_factory=lambda: [0.1, 0.5, 1.0], description=(
        "Traffic shares the canary is stepped through."))
    canary_min_verdicts: int = Field(default=30, description="Canary verdicts needed per step before a decision.")
    # The canary's sequential tests (careloop/retrain/stats.py): a canary worse than stable by these margins is caught.
    canary_overall_margin: float = Field(default=0.10, description=(
        "Overall Metric margin (α·SS + (1−α)·(1−ERR)) by which a worse canary is caught."))
    canary_err_margin: float = Field(default=0.10, description=(
        "ERR above stable's by more than this rolls back (a refusal spike)."))
    canary_alpha: float = Field(default=0.05, description=(
        "Chance of rolling back a canary that is no worse than stable."))
    canary_beta: float = Field(default=0.05, description="Chance of promoting a canary worse by a margin.")
    canary_max_verdicts: int = Field(default=240, description=(
        "The test's last look: a canary not shown no worse by then is rolled back."))
    canary_stable_verdicts: int = Field(default=600, description=(
        "Stable's latest verdicts the canary is compared with."))
    require_approval: bool = Field(default=False, description="A person must approve before a canary is promoted.")
    accelerate_config: str | None = Field(default=None, description="FSDP / DeepSpeed config for multi-GPU jobs.")
    kto_beta: float = Field(default=0.1, description="KTO beta.")
    kto_loss_type: Literal["kto", "apo_zero_unpaired"] = Field(default="apo_zero_unpaired", description=(
        "TRL's KTO loss: \"apo_zero_unpaired\" is KTO's loss with its reference point at 0 (no KL pass); "
        "\"kto\" estimates the reference point from mismatched pairs, two extra forward passes a step "
        "(costs in docs/recipe.md)."))
    dpo_beta: float = Field(default=0.1, description="DPO beta.")
    warmup_fraction: float = Field(default=0.1, description="Learning-rate warmup, as a share of one epoch's steps.")
    seed: int = Field(default=0, description="Random seed of training and sampling.")
    torch_threads: int = Field(default=1, description=(
        "CPU threads for training (0: torch's default, all cores); set 0 on a dedicated training node "
        "(docs/recipe.md)."))
    force_cpu: bool = Field(default=False, description="Train on the CPU even when a GPU is visible.")
    dpo_enabled: bool = Field(default=True, description="Run the DPO stage after KTO.")
    seed_harmful: int = Field(default=64, description=(
        "Seed harmful prompts per run (safe reply desirable, own failed reply undesirable)."))
    seed_benign: int = Field(default=32, description="Seed benign questions per run (own helpful answer desirable).")
    seed_borderline: int = Field(default=100, description=(
        "Risky-sounding benign prompts per run (answer desirable, refusal undesirable)."))
    refusal_contrast: bool = Field(default=True, description=(
        "The short refusals that are undesirable on harmless prompts are also desirable on the seed's harmful "
        "prompts, so KTO learns when to refuse rather than to avoid refusal-shaped text (docs/recipe.md)."))
    max_completion_words: int = Field(default=40, description=(
        "Completions are cut to whole sentences within this many words."))
    max_completion_tokens: int = Field(default=80, description=(
        "Reply length when generating policy replies and DPO alternatives."))
    max_dpo_candidates: int = Field(default=200, description=(
        "Failed traffic replies sent for a verified alternative per cycle."))
    max_seed_dpo_pairs: int = Field(default=64, description="DPO pairs drawn from the seed set per cycle at most.")
    max_dpo_pairs: int = Field(default=32, description=(
        "DPO pairs per cycle at most (verified traffic alternatives first)."))
    max_degenerate: float = Field(default=0.1, description=(
        "Reject a checkpoint whose validation replies loop more often than this…"))
    max_degenerate_increase: float = Field(default=0.05, description=(
        "…or, where the base already loops more, more than this above the base."))
    heartbeat_s: float = Field(default=15.0, description="How often a run records its heartbeat.")
    canary_max_error_rate: float = Field(default=0.02, description=(
        "Canary 5xx share above stable's by more than this rolls back."))
    canary_early_verdicts: int = Field(default=10, description=(
        "No judgement-based canary decision before this many verdicts."))
    canary_poll_s: float = Field(default=5.0, description="How often the canary analysis re-reads the verdicts.")
    canary_timeout_s: float = Field(default=1800.0, description="No canary decision by then: roll back.")


class DemoSettings(BaseModel):
    """`careloop demo`: how much traffic to replay and how long to let the loop run."""

    traffic: int = Field(default=240, description=(
        "Prompts replayed before the trigger (repeated in rounds until it fires)."))
    canary_traffic: int = Field(default=400, description="Prompts replayed at most while the canary is analysed.")
    concurrency: int = Field(default=8, description="Replay requests in flight.")
    max_tokens: int = Field(default=96, description="Reply length of replayed requests.")
    sample_rate: float = Field(default=1.0, description="Share judged; 1: every exchange, so the window fills fast.")
    min_samples: int = Field(default=60, description="The monitor's min_samples during the demo.")
    cycles: int = Field(default=2, description="Retrain cycles of the demo's run.")
    train_threads: int = Field(default=0, description=(
        "retrain.torch_threads during the demo (0: all cores): the demo sends no traffic while its run trains, so "
        "the training need not leave a core to vLLM."))
    eval_harmful: int = Field(default=60, description="Held-out harmful prompts evaluated before and after.")
    eval_benign: int = Field(default=60, description="Held-out benign prompts evaluated before and after.")
    eval_xstest_safe: int = Field(default=100, description="Held-out XSTest safe prompts evaluated before and after.")
    timeout_s: float = Field(default=5400.0, description=(
        "Give up after this (the run is measured to fit in an hour; the wall time is reported)."))
