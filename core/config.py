"""Typed run configuration: omegaconf structured dataclasses, YAML files and ``key=value`` overrides.

Every field carries ``metadata={"help": ...}``; a field with a fixed set of values also declares
``"choices"`` there, which one checker walks (the allowed values are written once, beside the field, and
``teachedit config show`` lists them). :func:`load_config` merges the schema, a YAML file and command-line
overrides, then :func:`validate` checks ranges, cross-field rules and the plugins a config names, and raises
:class:`ConfigError` messages that name the field and the fix. Built-in task, reward, algorithm and ARC view
names are constants here; the registries that implement them (in ``orchestrator``) are checked against them
when imported, so validating a config imports nothing above this package.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """A configuration value is missing, malformed or out of range. The message names the fix."""


# The built-in names a config may choose. The registries that implement them live above this package
# (orchestrator.tasks.TASKS, orchestrator.rewards.REWARDS / AGGREGATES, orchestrator.algorithms.ALGORITHMS,
# orchestrator.tasks.arc_grids.AUGMENTATIONS), each checked against its tuple here when it is imported, so
# a config is validated without importing them; a ``module:attribute`` name is a plugin (core.plugins).
TASK_NAMES = ("synthetic", "squad", "arc")
REWARD_NAMES = ("accuracy_gain", "logprob_gain", "combo")
AGGREGATE_NAMES = ("mean", "min", "weighted")
ALGORITHM_NAMES = ("rest_em", "grpo")
# What task.columns may map: the names teachedit reads -> the names in the user's data.
COLUMN_KEYS = ("title", "context", "questions", "question", "answer", "answers")
# task.arc.views: the ARC grid augmentations (orchestrator/tasks/arc_grids.py).
ARC_VIEWS = (
    "identity",
    "rotate90",
    "rotate180",
    "rotate270",
    "flip_horizontal",
    "flip_vertical",
    "transpose",
    "anti_transpose",
    "upscale2",
    "upscale_height2",
    "upscale_width2",
    "downscale2",
    "downscale_height2",
    "downscale_width2",
    "tile_horizontal2",
    "tile_vertical2",
    "tile_both2",
    "untile_horizontal2",
    "untile_vertical2",
    "untile_both2",
)


def check_registry(registry: Any, names: tuple[str, ...], where: str) -> None:
    """Fail at import when a registry's built-ins and the names config validation accepts disagree."""
    if tuple(registry) != names:
        raise RuntimeError(
            f"{where} registers {tuple(registry)} but core.config accepts {names}: update both"
        )


@dataclass
class TinyModelSpec:
    """A tiny model built locally from a config (no download), cached by its spec."""

    family: str = field(
        default="llama",
        metadata={"choices": ("llama", "qwen2", "gpt2"), "help": "Architecture of the tiny model."},
    )
    hidden_size: int = field(default=64, metadata={"help": "Width of the residual stream."})
    num_layers: int = field(default=2, metadata={"help": "Transformer blocks."})
    num_heads: int = field(default=4, metadata={"help": "Attention heads (must divide hidden_size)."})
    intermediate_size: int = field(default=0, metadata={"help": "MLP width; 0 means 4 x hidden_size."})
    vocab_size: int = field(default=512, metadata={"help": "BPE vocabulary trained on the task's corpus."})
    max_position: int = field(default=256, metadata={"help": "Longest sequence the model accepts."})
    pretrain: str = field(
        default="student",
        metadata={
            "choices": ("student", "teacher", "none"),
            "help": "Corpus the task provides for pretraining: 'student', 'teacher' or 'none'.",
        },
    )
    pretrain_steps: int = field(default=300, metadata={"help": "Optimizer steps of tiny pretraining."})
    pretrain_lr: float = field(default=3e-3, metadata={"help": "Peak learning rate of tiny pretraining."})
    pretrain_batch_size: int = field(default=32, metadata={"help": "Sequences per pretraining step."})
    seed: int = field(default=0, metadata={"help": "Seed of the tokenizer corpus, init and pretraining."})
    tokenizer_from: str | None = field(
        default=None,
        metadata={
            "help": "Reuse this folder's tokenizer instead of training one, to share its vocabulary (logit "
            "distillation needs it); 'teacher' means the config's teacher (resolved by `teachedit sweep`)."
        },
    )


@dataclass
class ModelConfig:
    """Where a model comes from: a hub id or local path, or a tiny spec built and cached locally."""

    path: str | None = field(
        default=None,
        metadata={"help": "Hub id (e.g. Qwen/Qwen2.5-7B) or local folder. Leave null to build `tiny`."},
    )
    tiny: TinyModelSpec | None = field(default=None, metadata={"help": "Spec of a locally built tiny model."})
    gguf: str | None = field(
        default=None,
        metadata={
            "help": "A GGUF checkpoint, converted once into the model cache: a registered source "
            "(smollm2-135m-instruct, gemma-3-270m: real models shipped in registry packages) or a .gguf path."
        },
    )
    revision: str | None = field(default=None, metadata={"help": "Hub revision (branch, tag or commit)."})
    dtype: str = field(
        default="float32",
        metadata={
            "choices": ("float32", "bfloat16", "float16", "auto"),
            "help": "float32 | bfloat16 | float16 | auto (the checkpoint's own dtype, from its config)",
        },
    )
    attn_implementation: str | None = field(
        default=None,
        metadata={
            "choices": ("eager", "sdpa", "flash_attention_2", "flex_attention"),
            "help": "Attention kernel passed to from_pretrained: eager | sdpa | flash_attention_2 | "
            "flex_attention; null: transformers' default for the model",
        },
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Run model code shipped with a hub checkpoint. Off unless you trust it."},
    )
    allow_pickle: bool = field(
        default=False,
        metadata={
            "help": "Load pickle weights (pytorch_model.bin) when a checkpoint has no safetensors. Unpickling "
            "a file can run code hidden in it: only for files you trust. Off: such checkpoints are refused."
        },
    )
    quantization: str | None = field(
        default=None,
        metadata={
            "help": "null | 4bit | 8bit: load the base weights quantized with bitsandbytes (QLoRA: NF4 with "
            "double quantization, compute in model.dtype). Needs bitsandbytes and a CUDA device; LoRA only."
        },
    )
    device: str | None = field(
        default=None,
        metadata={
            "help": "This model's device: null (run.device) | auto | cpu | cuda | cuda:N, e.g. the teacher on "
            "cuda:0 and a student on cuda:1. Under the deepspeed launcher each rank uses its own GPU instead."
        },
    )


@dataclass
class AdaptConfig:
    """How a student is updated on one edit (SEAL's inner loop)."""

    method: str = field(
        default="lora",
        metadata={"choices": ("lora", "full"), "help": "A LoRA per edit (peft), or full fine-tuning."},
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})
    target_modules: list[str] | None = field(
        default_factory=lambda: ["all-linear"],
        metadata={
            "help": "Modules that get adapters; ['all-linear'] picks every linear layer but the head; null "
            "uses peft's default for the architecture (SEAL's choice: q_proj, v_proj for Llama/Qwen2)."
        },
    )
    learning_rate: float = field(default=1e-3, metadata={"help": "Inner-loop learning rate."})
    epochs: int = field(default=10, metadata={"help": "Passes over the edit's training sequences."})
    batch_size: int = field(default=16, metadata={"help": "Sequences per inner-loop step."})
    max_length: int = field(
        default=128, metadata={"help": "Longest training sequence in tokens; longer ones are cut (recorded)."}
    )
    max_sequences: int = field(
        default=256,
        metadata={"help": "Most training sequences one edit gives; the rest are dropped (recorded)."},
    )
    include_context: bool = field(
        default=False, metadata={"help": "Also train on the raw passage (SEAL's 'passage + edit' variant)."}
    )
    loss_on: str = field(
        default="completion",
        metadata={
            "choices": ("completion", "all"),
            "help": "completion: mask prompt tokens out of the labels; all: train on every token.",
        },
    )
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping; 0 disables."})
    eval_times: int = field(
        default=1,
        metadata={
            "help": "Independent updates (seeds) per edit, their adapted scores averaged: SEAL's eval_times "
            "(3 in its SQuAD scripts). Costs that many updates per edit."
        },
    )
    edit_batch_size: int = field(
        default=8,
        metadata={
            "help": "LoRA edits adapted and scored together, one pass over the frozen base per step; same "
            "results as one at a time (1), faster, memory grows with it. Full fine-tuning goes one at a time."
        },
    )


@dataclass
class StudentConfig:
    """One member of the student pool."""

    name: str = field(default="???", metadata={"help": "Unique name used in records and reports."})
    model: ModelConfig = field(default_factory=ModelConfig)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)
    weight: float = field(default=1.0, metadata={"help": "Weight of this student in the pool's reward."})
    sharding: str = field(
        default="none",
        metadata={
            "choices": ("none", "zero2", "zero3"),
            "help": "none | zero2 | zero3 (under the deepspeed launcher).",
        },
    )
    offload: str = field(
        default="none",
        metadata={
            "choices": ("none", "cpu"),
            "help": "ZeRO-Offload of optimizer states (and zero3 parameters) to CPU memory.",
        },
    )
    gather_for_generation: bool = field(
        default=True,
        metadata={
            "help": "zero3 only: gather the whole student once per scoring call (greedy answers, gold "
            "log-probs), as TRL's ds3_gather_for_generation does, instead of layer by layer at every decoding "
            "step. Off, or with zero3_max_live_parameters set, a rank never holds the whole student."
        },
    )
    zero3_max_live_parameters: int | None = field(
        default=None,
        metadata={
            "help": "zero3 only: the most parameter elements a rank keeps gathered at once (DeepSpeed's "
            "stage3_max_live_parameters, with reuse caching and prefetch off), for a student whose passes "
            "must not gather it whole; null: DeepSpeed's defaults (a pass keeps every layer it used gathered)."
        },
    )
    max_new_tokens: int = field(default=16, metadata={"help": "Longest greedy answer when scoring."})
    eval_batch_size: int = field(default=32, metadata={"help": "Questions per scoring forward pass."})
    use_chat_template: str = field(
        default="auto",
        metadata={
            "choices": ("auto", "always", "never"),
            "help": "How questions (and QA training items) are put to the student: auto (its chat template "
            "if its tokenizer has one, e.g. instruct models) | always | never (the task's base prompt).",
        },
    )


@dataclass
class GenerationConfig:
    num_edits: int = field(default=4, metadata={"help": "Edits sampled per context (k)."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (> 0)."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling mass."})
    max_new_tokens: int = field(default=96, metadata={"help": "Longest edit in tokens."})
    batch_size: int = field(default=16, metadata={"help": "Prompts per generate() call."})
    backend: str = field(
        default="hf",
        metadata={
            "choices": ("hf", "vllm"),
            "help": "hf: transformers' generate; vllm: TRL's vLLM generation (a CUDA GPU and the vllm package), "
            "each edit seeded on its own so the edits do not depend on the world size.",
        },
    )
    vllm: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "With backend=vllm: arguments of TRL's VLLMGeneration (e.g. {mode: colocate, "
            "gpu_memory_utilization: 0.3, tensor_parallel_size: 1} or {mode: server, server_base_url: URL}); "
            "sampling settings come from the fields above."
        },
    )


@dataclass
class TeacherTrainConfig:
    method: str = field(
        default="full",
        metadata={
            "choices": ("full", "lora"),
            "help": "Full fine-tuning, or LoRA (merged after each round).",
        },
    )
    learning_rate: float = field(default=5e-4, metadata={"help": "Teacher learning rate."})
    epochs: float = field(default=2.0, metadata={"help": "Passes over the kept edits per round."})
    batch_size: int = field(default=8, metadata={"help": "Per-device batch size."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Steps per optimizer update."})
    lora_r: int = field(default=64, metadata={"help": "LoRA rank when method=lora."})
    lora_alpha: int = field(default=128, metadata={"help": "LoRA alpha when method=lora."})
    max_length: int = field(default=512, metadata={"help": "Longest (prompt + edit) sequence in tokens."})
    deepspeed: str | None = field(default=None, metadata={"help": "DeepSpeed JSON for TRL training."})
    trainer_args: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "Any other field of TRL's SFTConfig for the teacher update (e.g. {warmup_steps: 10, "
            "weight_decay: 0.01, gradient_checkpointing: true}); validated by TRL"
        },
    )


@dataclass
class TeacherConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    prompt_format: str = field(
        default="implications",
        metadata={
            "help": "Edit prompt: implications | rewrite | self-qa | notes | arc-directive, or one of "
            "teacher.prompt_formats"
        },
    )
    prompt_formats: dict[str, str] = field(
        default_factory=dict,
        metadata={
            "help": "Your own edit prompts, name -> template with {context} and optionally {title} (plain "
            "placeholders only; nothing is evaluated), e.g. {facts: 'List the facts of: {context}\\nFacts:\\n'}"
        },
    )
    use_chat_template: str = field(
        default="auto",
        metadata={
            "choices": ("auto", "always", "never"),
            "help": "auto (if the tokenizer has one) | always | never",
        },
    )
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    train: TeacherTrainConfig = field(default_factory=TeacherTrainConfig)


@dataclass
class ArcTaskConfig:
    """SEAL's ARC few-shot protocol (used when ``task.name=arc``); see orchestrator/tasks/arc.py."""

    train_challenges: str | None = field(
        default=None, metadata={"help": "ARC challenges JSON of the training tasks; null: bundled 12 tasks."}
    )
    train_solutions: str | None = field(
        default=None, metadata={"help": "Solutions JSON of the training tasks; null: bundled."}
    )
    eval_challenges: str | None = field(
        default=None, metadata={"help": "Challenges JSON of the held-out tasks; null: bundled 10 tasks."}
    )
    eval_solutions: str | None = field(
        default=None, metadata={"help": "Solutions JSON of the held-out tasks; null: bundled."}
    )
    max_tokens: int = field(
        default=8192,
        metadata={
            "help": "Tasks whose text (all pairs + test input and output) is longer are dropped (logged). "
            "Counted in characters, an upper bound on tokens for any tokenizer on this ASCII text."
        },
    )
    max_learning_rate: float = field(
        default=1e-2, metadata={"help": "Cap on a directive's learning_rate (larger values are clamped)."}
    )
    max_epochs: int = field(
        default=20, metadata={"help": "Cap on a directive's num_train_epochs (larger values are clamped)."}
    )
    max_items: int = field(
        default=250, metadata={"help": "Most leave-one-out training sequences per edit (SEAL's Nmax)."}
    )
    max_per_family: int = field(
        default=0, metadata={"help": "Transforms sampled per augmentation family; 0 uses all of them."}
    )
    colour_permutations: int = field(
        default=1, metadata={"help": "Colour-permuted copies of each augmented sequence (SEAL: 1)."}
    )
    views: list[str] = field(
        default_factory=lambda: [
            "identity",
            "transpose",
            "flip_vertical",
            "flip_horizontal",
            "rotate90",
            "rotate180",
        ],
        metadata={"help": "Invertible transforms the test input is predicted under; votes decide."},
    )


@dataclass
class TaskConfig:
    name: str = field(default="synthetic", metadata={"help": "synthetic | squad | arc"})
    path: str | None = field(
        default=None,
        metadata={
            "help": "squad: SEAL-format .json (a list) or .jsonl (a record per line); null: the bundled subset."
        },
    )
    dataset: str | None = field(
        default=None,
        metadata={
            "help": "squad: a `datasets` source instead of task.path: a .json/.jsonl/.csv/.parquet file, a "
            "save_to_disk folder, or a hub id (e.g. rajpurkar/squad); rows nested (SEAL) or one per question"
        },
    )
    dataset_config: str | None = field(
        default=None, metadata={"help": "The hub dataset's configuration name."}
    )
    split: str = field(
        default="train", metadata={"help": "Split of task.dataset (hub id or DatasetDict folder)."}
    )
    columns: dict[str, str] = field(
        default_factory=dict,
        metadata={
            "help": "Column mapping for task.dataset, teachedit's name -> yours: title, context, questions, "
            "question, answer, answers (dotted for nested fields), e.g. {context: passage, answers: answers.text}"
        },
    )
    num_train_contexts: int = field(
        default=16, metadata={"help": "Contexts the teacher is trained on per round."}
    )
    num_heldout_contexts: int = field(default=16, metadata={"help": "Fixed contexts scored every round."})
    max_questions: int = field(default=0, metadata={"help": "Questions kept per context; 0 keeps all."})
    seed: int = field(default=0, metadata={"help": "Seed of the synthetic world / of context sampling."})
    protocol: str = field(
        default="seal",
        metadata={
            "choices": ("seal", "qa_lines"),
            "help": "squad: seal (SEAL's training sequences and QA prompt, orchestrator/tasks/squad.py) | "
            "qa_lines (one sequence per line, 'Q: A:' lines as QA, passage only with adapt.include_context)",
        },
    )
    arc: ArcTaskConfig = field(default_factory=ArcTaskConfig, metadata={"help": "Settings of task arc."})


@dataclass
class RewardConfig:
    name: str = field(
        default="accuracy_gain", metadata={"help": "A registered reward (see orchestrator.rewards)."}
    )
    score: str = field(
        default="em",
        metadata={
            "choices": ("em", "f1", "logprob"),
            "help": "The score whose gain is rewarded.",
        },
    )
    aggregate: str = field(
        default="mean",
        metadata={
            "choices": AGGREGATE_NAMES,
            "help": "How the students' rewards combine (weighted: by students[].weight).",
        },
    )
    weights: dict[str, float] = field(
        default_factory=dict,
        metadata={
            "help": "For name=combo: reward name -> weight, e.g. {accuracy_gain: 1.0, logprob_gain: 0.1}."
        },
    )
    penalty: float = field(
        default=0.0,
        metadata={
            "help": "Reward of a degenerate edit (empty, over-long, rejected by the task); not trained on."
        },
    )
    max_edit_chars: int = field(
        default=0, metadata={"help": "Edits longer than this many characters are degenerate; 0: no limit."}
    )


@dataclass
class GRPOSettings:
    """Online teacher training with TRL's GRPOTrainer (algorithm.name=grpo). Sampling temperature and top_p
    come from teacher.generation, so training samples and held-out proposals share one distribution."""

    steps_per_round: int = field(default=4, metadata={"help": "GRPO optimizer steps per round."})
    prompts_per_step: int = field(
        default=4,
        metadata={"help": "Training contexts per step (per rank); each gets num_generations edits."},
    )
    num_generations: int = field(
        default=4, metadata={"help": "Group size G: edits sampled per context, whose rewards are compared."}
    )
    learning_rate: float = field(
        default=1e-4,
        metadata={
            "help": "Teacher learning rate (constant). Tiny teachers: ~3e-4; 1B+ teachers: ~1e-6 (TRL's)."
        },
    )
    beta: float = field(
        default=0.0,
        metadata={
            "help": "KL coefficient toward the teacher at the start of the round; 0 loads no reference."
        },
    )
    method: str = field(
        default="full",
        metadata={
            "choices": ("full", "lora"),
            "help": "Full fine-tuning, or LoRA (merged after each round).",
        },
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank when method=lora."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha when method=lora."})
    max_edit_tokens: int = field(
        default=0,
        metadata={"help": "Longest sampled edit in tokens; 0 uses teacher.generation.max_new_tokens."},
    )
    loss_type: str = field(
        default="dapo",
        metadata={
            "choices": ("dapo", "grpo", "dr_grpo", "bnpo", "cispo", "sapo"),
            "help": "TRL loss: dapo | grpo | dr_grpo | bnpo | cispo | sapo (see trl.GRPOConfig).",
        },
    )
    scale_rewards: str = field(
        default="group",
        metadata={
            "choices": ("group", "batch", "none"),
            "help": "Advantage scaling: group (std per group) | batch | none.",
        },
    )
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "Trade compute for memory on large teachers."}
    )
    trainer_args: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "Any other field of TRL's GRPOConfig (e.g. {logging_steps: 5, max_grad_norm: 0.5})."
        },
    )


@dataclass
class AlgorithmConfig:
    name: str = field(default="rest_em", metadata={"help": "rest_em | grpo"})
    rounds: int = field(default=2, metadata={"help": "Teacher updates; rounds 0..rounds are scored."})
    keep: str = field(
        default="best_of_k",
        metadata={
            "choices": ("best_of_k", "threshold", "seal", "above_mean"),
            "help": "best_of_k (best edit per context if reward > threshold) | threshold (every edit above "
            "it) | seal (SEAL's: best edit per context whatever its sign; threshold unused) | above_mean "
            "(every edit whose reward exceeds its context's mean by more than threshold; not in SEAL)",
        },
    )
    threshold: float = field(
        default=0.0,
        metadata={
            "help": "Edits must have reward (above_mean: reward minus their context's mean) strictly above this."
        },
    )
    grpo: GRPOSettings = field(default_factory=GRPOSettings)


TRACKERS = ("tensorboard", "wandb", "trackio")  # run.report_to (orchestrator/tracking.py)


@dataclass
class RunConfig:
    name: str = field(default="default", metadata={"help": "Run directory name under output_dir."})
    output_dir: str = field(default="runs", metadata={"help": "Parent folder of run directories."})
    cache_dir: str = field(
        default=".cache/teachedit", metadata={"help": "Where tiny models are built and cached."}
    )
    seed: int = field(default=0, metadata={"help": "Global seed; per-edit seeds derive from it."})
    dist_timeout_minutes: float = field(
        default=60.0,
        metadata={
            "help": "Under a launcher: how long a collective waits for the slowest rank before the run fails "
            "(ranks wait for the slowest one's share of sampling and scoring; raise it for long generations)."
        },
    )
    device: str = field(
        default="auto",
        metadata={
            "choices": ("auto", "cpu", "cuda"),
            "help": "Where the models run (auto: cuda when visible).",
        },
    )
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing run directory."})
    progress: bool = field(default=True, metadata={"help": "Show progress bars."})
    report_to: list[str] = field(
        default_factory=lambda: ["none"],
        metadata={
            "help": "Experiment trackers for every trainer and the round metrics, as one tracker run named "
            "run.name: none | tensorboard | wandb | trackio (several allowed, e.g. [tensorboard,wandb])."
        },
    )


@dataclass
class JudgeConfig:
    """A local causal LM that grades no-context answers yes/no, like SEAL's grader (never a paid API)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    use_chat_template: str = field(
        default="auto",
        metadata={
            "choices": ("auto", "always", "never"),
            "help": "auto (if the tokenizer has one) | always | never",
        },
    )
    batch_size: int = field(default=16, metadata={"help": "Grading prompts per forward pass."})


@dataclass
class DistillConfig:
    """The logit-distillation baseline row of `teachedit sweep`: TRL's GKDTrainer for students sharing the
    teacher's tokenizer, TRL's GOLDTrainer (ULD loss) for the others. The student's adapt section sets
    LoRA/full, learning rate, epochs, batch size."""

    enabled: bool = field(default=False, metadata={"help": "Add the distillation row to the sweep."})
    teacher: str = field(
        default="teacher",
        metadata={"help": "Distil from: 'teacher' (the config's) or 'teacher:PATH' (e.g. a run's round)."},
    )
    beta: float = field(
        default=0.5,
        metadata={"help": "Generalized JSD: 0 forward KL, 1 reverse KL, 0.5 JSD (GKDConfig.beta)."},
    )
    lmbda: float = field(
        default=0.0,
        metadata={"help": "Fraction of steps on student-generated completions (0: on the teacher's edits)."},
    )
    seq_kd: bool = field(
        default=False, metadata={"help": "Let the teacher sample fresh completions each step (GKD seq_kd)."}
    )
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of on-policy steps."})
    max_new_tokens: int = field(default=64, metadata={"help": "Longest on-policy completion in tokens."})
    cross_tokenizer: str = field(
        default="gold",
        metadata={
            "choices": ("gold", "skip"),
            "help": "Students whose tokenizer differs from the teacher's: gold (TRL's GOLDTrainer with the ULD "
            "loss, which aligns the two tokenizations of the same text) | skip (n/a in the table)",
        },
    )
    trainer_args: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "Any other field of TRL's GKDConfig (and GOLDConfig, for students on another tokenizer) for "
            "the distillation row (e.g. {warmup_steps: 5})."
        },
    )


@dataclass
class SweepConfig:
    """`teachedit sweep`: edit sources x students x protocols, each cell cached under the sweep directory."""

    data: str | None = field(
        default=None,
        metadata={"help": "SEAL-format passages scored; null uses the bundled SQuAD dev subset."},
    )
    limit: int = field(
        default=8, metadata={"help": "Passages evaluated (the first N covered by every file)."}
    )
    sources: dict[str, str | None] = field(
        default_factory=dict,
        metadata={
            "help": "name -> 'passage' | 'teacher' (the config's) | 'teacher:CHECKPOINT_DIR' | 'edits:FILE.json'; "
            "null drops a source the YAML lists (sweep.sources.NAME=null)"
        },
    )
    students: list[str] = field(
        default_factory=list, metadata={"help": "Names from `students` in the sweep; empty means all."}
    )
    protocols: list[str] = field(
        default_factory=lambda: ["single", "cpt"], metadata={"help": "single | cpt (see `teachedit eval`)."}
    )
    cpt_n: int = field(default=4, metadata={"help": "cpt: passages per update."})
    k: int = field(default=0, metadata={"help": "Edits per passage used (0: all)."})
    metric: str = field(
        default="gold_logprob",
        metadata={
            "choices": ("gold_logprob", "em", "f1"),
            "help": "Gain shown in the table and heatmap (the mean gold-answer log-prob, or EM, or F1).",
        },
    )
    distill: DistillConfig = field(default_factory=DistillConfig)
    pools: dict[str, list[str]] = field(
        default_factory=dict,
        metadata={"help": "Student pools for held-out transfer, e.g. {A: [llama-s], B: [gpt2-s, qwen2-s]}."},
    )
    teacher_run: str | None = field(
        default=None,
        metadata={
            "help": "A `teachedit run` directory: each teacher/round_k becomes a source '<run>/round_k'."
        },
    )
    teacher_pool: str | None = field(
        default=None,
        metadata={
            "help": "The pool teacher_run trained against; if teacher_run does not exist yet the sweep trains "
            "it first (algorithm/task of this config, students of that pool)."
        },
    )
    name: str | None = field(
        default=None, metadata={"help": "Sweep directory under run.output_dir; null uses run.name."}
    )


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    students: list[StudentConfig] = field(default_factory=list)
    reward: RewardConfig = field(default_factory=RewardConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    judge: JudgeConfig | None = field(
        default=None, metadata={"help": "Optional yes/no grader used by `teachedit eval`; null disables it."}
    )
    sweep: SweepConfig = field(
        default_factory=SweepConfig,
        metadata={"help": "`teachedit sweep` settings (ignored by other commands)."},
    )


def _merge_students(current: list[Any], raw: Any) -> list[Any]:
    """A YAML list replaces the students; ``students.<i>.key=value`` overrides (a mapping by index) edit one.
    omegaconf cannot type a list of dataclasses on its own, so each entry is merged into the schema."""
    if raw is None:
        return []
    if isinstance(raw, ListConfig):
        return [OmegaConf.merge(OmegaConf.structured(StudentConfig), s) for s in raw]
    if not isinstance(raw, DictConfig):
        raise ConfigError("students must be a list of {name, model, adapt} entries")
    out = list(current)
    for key, value in raw.items():
        if not str(key).isdigit() or int(key) > len(out):
            raise ConfigError(f"students.{key}: index out of range; there are {len(out)} students (0-based)")
        i = int(key)
        base = out[i] if i < len(out) else OmegaConf.structured(StudentConfig)
        merged = OmegaConf.merge(base, value)
        out[i : i + 1] = [merged]
    return out


def _install_roots() -> list[Path]:
    """Where the project's own files are: a source checkout's root (``configs/``, ``orchestrator/data/``), and
    the installed ``orchestrator`` package, which holds ``configs/`` as ``orchestrator/configs``."""
    root = Path(__file__).resolve().parent.parent  # the checkout, or site-packages
    return [root, root / "orchestrator"]


def bundled_configs() -> dict[str, Path]:
    """The configs that come with teachedit, by name (``default``, ``real_cpu``, ``paper/squad_qwen2.5-7b_seal``)."""
    found: dict[str, Path] = {}
    for root in _install_roots():
        folder = root / "configs"
        if folder.is_dir():
            for f in sorted(folder.rglob("*.yaml")):
                found.setdefault(f.relative_to(folder).with_suffix("").as_posix(), f)
    return found


def find_config(path: str | Path) -> Path:
    """A config file: ``path`` itself when it exists, else a bundled config of that name (``default``,
    ``default.yaml``, ``configs/default.yaml`` from any folder, ``paper/squad_qwen2.5-7b_seal``)."""
    p = Path(path)
    if p.is_file():
        return p
    name = p.as_posix().removesuffix(".yaml").removeprefix("configs/")
    bundled = bundled_configs()
    if name in bundled:
        return bundled[name]
    raise ConfigError(
        f"config file not found: {path}. Pass a YAML file, or the name of a bundled config: "
        f"{', '.join(bundled) or '(none installed)'}"
    )


def _bundled_file(value: str | None) -> str | None:
    """A relative path a bundled config names (``orchestrator/data/...``, ``configs/deepspeed/...``) that is
    not under the current folder, found where teachedit is installed; anything else unchanged."""
    if not value or Path(value).is_absolute() or Path(value).exists():
        return value
    for root in _install_roots():
        candidate = root / value
        if candidate.exists():
            return str(candidate)
    return value


def _resolve_bundled_paths(cfg: Config) -> None:
    t = cfg.task
    t.path = _bundled_file(t.path)
    if t.dataset and Path(t.dataset).suffix:
        t.dataset = _bundled_file(t.dataset)
    for key in ("train_challenges", "train_solutions", "eval_challenges", "eval_solutions"):
        setattr(t.arc, key, _bundled_file(getattr(t.arc, key)))
    cfg.teacher.train.deepspeed = _bundled_file(cfg.teacher.train.deepspeed)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Schema ← YAML ← ``key=value`` overrides, validated. Raises :class:`ConfigError` with the fix.

    ``path`` is a YAML file or the name of a bundled config (:func:`find_config`); relative data paths a
    config names are read from the current folder, else from where teachedit is installed."""
    schema = OmegaConf.structured(Config)
    layers: list[DictConfig] = []
    if path is not None:
        path = find_config(path)
        try:
            raw = yaml.safe_load(path.read_text())
            loaded = OmegaConf.load(path)
        except Exception as exc:  # yaml.YAMLError and friends
            raise ConfigError(f"{path} is not valid YAML: {exc}".strip()) from None
        if not isinstance(raw, dict) or not isinstance(loaded, DictConfig):
            raise ConfigError(f"{path} must hold a mapping at the top level (run:, task:, teacher:, ...).")
        layers.append(loaded)
    if overrides:
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ConfigError(f"overrides must look like key=value, got {bad}. Example: algorithm.rounds=3")
        layers.append(OmegaConf.from_dotlist(list(overrides)))
    try:
        merged = schema
        students: list[Any] = []
        for layer in layers:
            if "students" in layer:
                students = _merge_students(students, layer.students)
                layer = layer.copy()
                del layer["students"]
            merged = OmegaConf.merge(merged, layer)
        merged.students = students
        cfg: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as exc:
        raise ConfigError(_explain_omegaconf(exc)) from None
    _resolve_bundled_paths(cfg)
    validate(cfg)
    return cfg


def _explain_omegaconf(exc: OmegaConfBaseException) -> str:
    key = getattr(exc, "full_key", None) or "?"
    msg = str(exc).splitlines()[0]
    if "Key" in msg and "not in" in msg:
        return f"unknown config key '{key}': {msg}. Check the spelling against configs/default.yaml."
    if "Value" in msg and ("could not be converted" in msg or "not a valid" in msg or "Invalid" in msg):
        return f"wrong type for '{key}': {msg}."
    if "Missing mandatory value" in msg:
        return f"'{key}' must be set: {msg}."
    return f"invalid config at '{key}': {msg}"


def _check(cond: bool, where: str, message: str) -> None:
    if not cond:
        raise ConfigError(f"{where}: {message}")


def _check_model(m: ModelConfig, where: str) -> None:
    _check(m.quantization in (None, "4bit", "8bit"), f"{where}.quantization", "use null, 4bit or 8bit")
    _check(
        m.device is None or re.fullmatch(r"auto|cpu|cuda(:\d+)?", m.device) is not None,
        f"{where}.device",
        "use null (run.device), auto, cpu, cuda or cuda:N",
    )
    _check(
        m.quantization is None or m.device != "cpu",
        f"{where}.quantization",
        "bitsandbytes quantization needs a CUDA device; set model.device (or run.device) to cuda, or quantization=null",
    )
    sources = [k for k in ("path", "gguf") if getattr(m, k) is not None]
    _check(
        bool(sources) or m.tiny is not None,
        where,
        "set model.path (hub id or folder), model.gguf (a registered GGUF source or .gguf file) or model.tiny",
    )
    _check(len(sources) <= 1, where, "set only one of model.path and model.gguf")
    if m.tiny is not None and not sources:
        t = m.tiny
        _check(
            t.hidden_size > 0 and t.num_heads > 0 and t.hidden_size % t.num_heads == 0,
            f"{where}.tiny",
            "hidden_size must be a positive multiple of num_heads",
        )
        _check(t.num_layers > 0, f"{where}.tiny.num_layers", "must be >= 1")
        _check(64 <= t.vocab_size <= 65536, f"{where}.tiny.vocab_size", "use 64..65536")
        _check(t.pretrain_steps >= 0, f"{where}.tiny.pretrain_steps", "must be >= 0")


def _check_arc(a: ArcTaskConfig) -> None:
    for key in ("train_challenges", "train_solutions", "eval_challenges", "eval_solutions"):
        path = getattr(a, key)
        if path is not None:
            _check(Path(path).is_file(), f"task.arc.{key}", f"file not found: {path} (null uses the bundled)")
    _check(a.max_tokens >= 16, "task.arc.max_tokens", "must be >= 16")
    _check(0 < a.max_learning_rate <= 1, "task.arc.max_learning_rate", "must be in (0, 1]")
    _check(a.max_epochs >= 1, "task.arc.max_epochs", "must be >= 1")
    _check(a.max_items >= 1, "task.arc.max_items", "must be >= 1")
    _check(a.max_per_family >= 0, "task.arc.max_per_family", "must be >= 0 (0 uses all)")
    _check(a.colour_permutations >= 0, "task.arc.colour_permutations", "must be >= 0")
    _check(len(a.views) >= 1, "task.arc.views", "list at least one view, e.g. [identity]")
    unknown = [v for v in a.views if v not in ARC_VIEWS]
    _check(not unknown, "task.arc.views", f"unknown {unknown}; choose from {', '.join(ARC_VIEWS)}")


def _check_plugins(cfg: Config) -> None:
    """Load and check what the config names from the user's own code (``module:attribute``, :mod:`core.plugins`)
    and the prompt formats it defines; the formats are registered for the teacher to render."""
    from core.plugins import PluginError, is_plugin, load_reward_plugin, load_task_plugin
    from core.prompts import register_prompt_format

    try:
        if is_plugin(cfg.task.name):
            load_task_plugin(cfg.task.name, "task.name")
        for key, name in [("reward.name", cfg.reward.name)] + [
            (f"reward.weights.{n}", n) for n in cfg.reward.weights
        ]:
            if is_plugin(name):
                load_reward_plugin(name, key)
        for name, template in cfg.teacher.prompt_formats.items():
            register_prompt_format(name, template)
    except PluginError as exc:
        raise ConfigError(str(exc)) from None
    except ValueError as exc:  # a prompt template that register_prompt_format refuses
        raise ConfigError(f"teacher.prompt_formats: {exc}") from None


def check_reward_config(r: RewardConfig) -> str | None:
    """What is wrong with a ``reward`` section's combo weights and penalty, or None."""
    from core.plugins import is_plugin

    if r.name == "combo":
        if not r.weights:
            return "reward.name=combo needs reward.weights, e.g. {accuracy_gain: 1.0, logprob_gain: 0.1}"
        known = [n for n in REWARD_NAMES if n != "combo"]
        bad = sorted(n for n in r.weights if n not in known and not is_plugin(n))
        if bad:
            return f"reward.weights names unknown rewards {bad}; choose from {known} or a plugin (module:function)"
        if not all(math.isfinite(float(w)) for w in r.weights.values()):
            return "reward.weights must be finite numbers"
    elif r.weights:
        return (
            "reward.weights is read only by reward.name=combo; set reward.name=combo or remove reward.weights"
        )
    if not math.isfinite(r.penalty):
        return "reward.penalty must be a finite number (e.g. 0.0 or -0.5)"
    if r.max_edit_chars < 0:
        return "reward.max_edit_chars must be >= 0 (0: no limit)"
    return None


def _check_choices(obj: Any, where: str) -> None:
    """Every field that declares ``choices`` in its metadata holds one of them (a None of an optional field
    passes), checked recursively with the field's dotted path in the message."""
    import dataclasses

    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{where}.{f.name}" if where else f.name
        choices = f.metadata.get("choices")
        if choices is not None and value is not None:
            _check(value in choices, key, f"use {' | '.join(choices)}, not {value!r}")
        if dataclasses.is_dataclass(value):
            _check_choices(value, key)
        elif isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
            for i, item in enumerate(value):
                _check_choices(item, f"{key}[{i}]")


def validate(cfg: Config) -> None:
    """Check ranges and cross-field rules. Raises :class:`ConfigError` naming the field and the fix."""
    from core.plugins import is_plugin

    _check(
        bool(cfg.run.name) and "/" not in cfg.run.name and cfg.run.name not in (".", ".."),
        "run.name",
        "a non-empty name without '/' (and not '.' or '..')",
    )
    _check(
        all(v in ("none", *TRACKERS) for v in cfg.run.report_to)
        and ("none" not in cfg.run.report_to or len(cfg.run.report_to) == 1),
        "run.report_to",
        "a list of none | tensorboard | wandb | trackio, e.g. run.report_to=[tensorboard] ('none' alone)",
    )
    _check(
        0 <= cfg.run.seed < 2**32, "run.seed", "must be in [0, 2**32 - 1] (the range numpy and torch seed)"
    )
    _check(0 <= cfg.task.seed < 2**32, "task.seed", "must be in [0, 2**32 - 1]")
    _check(
        cfg.run.dist_timeout_minutes > 0 and math.isfinite(cfg.run.dist_timeout_minutes),
        "run.dist_timeout_minutes",
        "must be > 0 (minutes a collective waits for the slowest rank)",
    )
    _check_choices(cfg, "")
    _check_plugins(cfg)
    _check(
        cfg.task.name in TASK_NAMES or is_plugin(cfg.task.name),
        "task.name",
        f"unknown task '{cfg.task.name}'; choose from {list(TASK_NAMES)} or a plugin (module:Class)",
    )
    _check(cfg.task.num_train_contexts >= 1, "task.num_train_contexts", "must be >= 1")
    _check(cfg.task.num_heldout_contexts >= 0, "task.num_heldout_contexts", "must be >= 0")
    _check(cfg.task.max_questions >= 0, "task.max_questions", "must be >= 0 (0 keeps all)")
    if cfg.task.path is not None:
        _check(Path(cfg.task.path).is_file(), "task.path", f"file not found: {cfg.task.path}")
    _check(
        cfg.task.path is None or cfg.task.dataset is None,
        "task.dataset",
        "set task.path or task.dataset, not both",
    )
    bad = sorted(set(cfg.task.columns) - set(COLUMN_KEYS))
    _check(not bad, "task.columns", f"unknown keys {bad}; map any of {list(COLUMN_KEYS)}")
    _check(
        cfg.task.dataset is not None or not cfg.task.columns, "task.columns", "applies to task.dataset only"
    )
    if cfg.task.name == "arc":
        _check_arc(cfg.task.arc)

    _check_model(cfg.teacher.model, "teacher.model")
    _check(
        cfg.teacher.model.quantization is None or cfg.teacher.train.method == "lora",
        "teacher.train.method",
        "a quantized teacher (teacher.model.quantization) trains LoRA adapters only (QLoRA): set method=lora",
    )
    _check(
        cfg.teacher.model.quantization is None
        or cfg.algorithm.name != "grpo"
        or cfg.algorithm.grpo.method == "lora",
        "algorithm.grpo.method",
        "a quantized teacher (teacher.model.quantization) trains LoRA adapters only (QLoRA): set method=lora",
    )
    g = cfg.teacher.generation
    _check(g.num_edits >= 1, "teacher.generation.num_edits", "must be >= 1")
    _check(
        g.temperature > 0 and math.isfinite(g.temperature), "teacher.generation.temperature", "must be > 0"
    )
    _check(0 < g.top_p <= 1, "teacher.generation.top_p", "must be in (0, 1]")
    _check(g.max_new_tokens >= 1, "teacher.generation.max_new_tokens", "must be >= 1")
    t = cfg.teacher.train
    _check(t.learning_rate > 0, "teacher.train.learning_rate", "must be > 0")
    _check(t.epochs > 0, "teacher.train.epochs", "must be > 0")
    if t.deepspeed is not None:
        _check(Path(t.deepspeed).is_file(), "teacher.train.deepspeed", f"file not found: {t.deepspeed}")

    _check(len(cfg.students) >= 1, "students", "list at least one student (name, model, adapt)")
    names = [s.name for s in cfg.students]
    _check(len(set(names)) == len(names), "students", f"names must be unique, got {names}")
    for i, s in enumerate(cfg.students):
        where = f"students[{i}]"
        _check(s.name not in ("", "???"), f"{where}.name", "give every student a unique name")
        _check_model(s.model, f"{where}.model")
        _check(
            s.model.quantization is None or s.adapt.method == "lora",
            f"{where}.adapt.method",
            "a quantized student (model.quantization) is adapted with LoRA only (QLoRA): set method=lora",
        )
        a = s.adapt
        _check(
            a.learning_rate > 0 and math.isfinite(a.learning_rate),
            f"{where}.adapt.learning_rate",
            "must be > 0",
        )
        _check(a.epochs >= 1, f"{where}.adapt.epochs", "must be >= 1")
        _check(a.batch_size >= 1, f"{where}.adapt.batch_size", "must be >= 1")
        _check(a.max_length >= 2, f"{where}.adapt.max_length", "must be >= 2 tokens")
        _check(a.max_sequences >= 1, f"{where}.adapt.max_sequences", "must be >= 1")
        _check(a.edit_batch_size >= 1, f"{where}.adapt.edit_batch_size", "must be >= 1 (1 = one at a time)")
        _check(a.lora_r >= 1, f"{where}.adapt.lora_r", "must be >= 1")
        _check(s.weight >= 0, f"{where}.weight", "must be >= 0")
        _check(a.eval_times >= 1, f"{where}.adapt.eval_times", "must be >= 1 (updates averaged per edit)")
        _check(
            a.target_modules is None or len(a.target_modules) > 0,
            f"{where}.adapt.target_modules",
            "give module names, ['all-linear'], or null for peft's per-architecture default",
        )
        _check(
            s.zero3_max_live_parameters is None
            or (s.zero3_max_live_parameters >= 1 and s.sharding == "zero3"),
            f"{where}.zero3_max_live_parameters",
            "a positive number of parameter elements, with sharding: zero3 (null: DeepSpeed's defaults)",
        )
        _check(
            s.offload == "none" or s.sharding != "none",
            f"{where}.offload",
            "offload needs sharding: zero2 or zero3 (set offload: none for an unsharded student)",
        )

    _check(
        cfg.reward.name in REWARD_NAMES or is_plugin(cfg.reward.name),
        "reward.name",
        f"unknown reward; choose from {list(REWARD_NAMES)} or a plugin (module:function)",
    )
    if cfg.reward.aggregate == "weighted":
        _check(sum(s.weight for s in cfg.students) > 0, "students[].weight", "weights must not all be 0")
    problem = check_reward_config(cfg.reward)
    _check(problem is None, "reward", str(problem))

    _check(cfg.algorithm.name in ALGORITHM_NAMES, "algorithm.name", f"choose from {list(ALGORITHM_NAMES)}")
    _check(cfg.algorithm.rounds >= 0, "algorithm.rounds", "must be >= 0")
    if cfg.algorithm.name == "grpo":
        _check_grpo(cfg)
    if cfg.judge is not None:
        _check_model(cfg.judge.model, "judge.model")
        _check(cfg.judge.batch_size >= 1, "judge.batch_size", "must be >= 1")


def _check_grpo(cfg: Config) -> None:
    g, w = cfg.algorithm.grpo, "algorithm.grpo"
    _check(g.steps_per_round >= 1, f"{w}.steps_per_round", "must be >= 1")
    _check(
        1 <= g.prompts_per_step <= cfg.task.num_train_contexts,
        f"{w}.prompts_per_step",
        f"must be in 1..task.num_train_contexts ({cfg.task.num_train_contexts})",
    )
    _check(g.num_generations >= 2, f"{w}.num_generations", "GRPO compares >= 2 edits per context; use >= 2")
    _check(g.learning_rate > 0 and math.isfinite(g.learning_rate), f"{w}.learning_rate", "must be > 0")
    _check(g.beta >= 0 and math.isfinite(g.beta), f"{w}.beta", "must be >= 0 (0 disables the KL term)")
    _check(g.lora_r >= 1, f"{w}.lora_r", "must be >= 1")
    _check(
        g.max_edit_tokens >= 0, f"{w}.max_edit_tokens", "must be >= 0 (0: teacher.generation.max_new_tokens)"
    )


def to_yaml(cfg: Config) -> str:
    """The resolved config as YAML (saved as ``config.yaml`` in the run directory)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def describe_fields(section: str | None = None) -> list[tuple[str, str, str, str]]:
    """Every config field as ``(dotted key, type, default, help)``, for ``teachedit config show``. ``section``
    (``teacher``, ``teacher.generation``, ``students``...) keeps the fields under it; ``students`` entries are
    shown as ``students.<i>``. Raises :class:`ConfigError` for an unknown section."""
    import dataclasses
    import typing

    rows: list[tuple[str, str, str, str]] = []

    def walk(cls: Any, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            key = f"{prefix}{f.name}"
            hint = hints[f.name]
            inner = _dataclass_in(hint)
            if f.name == "students":
                walk(StudentConfig, f"{key}.<i>.")
                continue
            if inner is not None:
                walk(inner, f"{key}.")
                continue
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                default = f.default_factory()  # type: ignore[misc]
            else:
                default = "(required)"
            type_name = str(hint).replace("typing.", "") if not isinstance(hint, type) else hint.__name__
            if "choices" in f.metadata:
                type_name = " | ".join(f.metadata["choices"])
            shown = "(required)" if default == "???" else repr(default)
            rows.append((key, type_name, shown, f.metadata.get("help", "")))

    walk(Config, "")
    if section is None:
        return rows
    sec = section.rstrip(".")
    kept = [r for r in rows if r[0] == sec or r[0].startswith(sec + ".")]
    if not kept:
        sections = sorted({r[0].split(".")[0] for r in rows})
        raise ConfigError(f"config show: no section '{section}'; choose from {', '.join(sections)}")
    return kept


def _dataclass_in(hint: Any) -> Any:
    """The dataclass a field holds (also inside ``X | None``), or None."""
    import dataclasses
    import typing

    if dataclasses.is_dataclass(hint):
        return hint
    for arg in typing.get_args(hint):
        if dataclasses.is_dataclass(arg):
            return arg
    return None
