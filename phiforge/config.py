"""Recipes: typed dataclasses loaded from YAML, with dotted `--set key=value` overrides.

Every value is checked against its field's type and every section against its constraints, and each error names
the dotted key at fault, so a typo in a recipe fails in the first second instead of an hour into training.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from phiforge.errors import PhiforgeError

RECIPES_DIR = Path(__file__).parent / "recipes"
DEFAULT_RECIPE = "tiny"

# The names a recipe may use for things implemented in the layers above this module, which a recipe is checked
# against when it is loaded; each implementing registry is keyed by exactly these (tests/test_config.py).
DOMAINS = ("arithmetic", "fractions", "linear_equations", "number_theory", "quadratics_polynomials", "linear_systems",
           "decimals_percentages", "combinatorics", "probability", "sequences_series", "geometry", "unit_conversion",
           "physics", "python_code", "place_value", "comparison", "signed_arithmetic", "multiply_divide",
           "divisibility", "number_bases", "linear_one_unknown", "linear_two_unknowns", "polynomials", "expressions",
           "chained_steps")  # phiforge.data.problems
STYLES = ("textbook", "exercise", "answer_only", "fill_in_the_middle")  # phiforge.data.render
WORKFLOWS = ("rewrite", "revise", "reverse_code", "plurality", "qa")  # phiforge.data.workflows
FEEDS = ("stdlib_code", "stdlib_docs", "package_pages", "pydoc_topics")  # phiforge.data.ingest
BENCHMARKS = ("gsm8k100", "champ", "humaneval", "gsm-symbolic", "deepmind-math", "amc-synthetic")  # phiforge.eval
MIXTURE_SOURCES = ("synthetic", "web", "web_rewrite", "code", "acquired")  # phiforge.train.pretrain
POLICIES = ("teacher", "sft", "dpo")  # who answers judge-guided DPO's questions (phiforge.train.judge_dpo)


@dataclass
class ModelConfig:
    vocab_size: int = 1024
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 2
    d_ffn: int = 384
    max_seq_len: int = 512
    rope_theta: float = 10000.0
    rms_eps: float = 1e-5
    init_std: float = 0.02

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def validate(self, key: str, need) -> None:
        for k in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ffn", "max_seq_len"):
            need(getattr(self, k) > 0, f"{key}.{k}", "must be positive")
        need(self.d_model % self.n_heads == 0, f"{key}.n_heads",
             f"({self.n_heads}) must divide {key}.d_model ({self.d_model})")
        need(self.n_heads % self.n_kv_heads == 0, f"{key}.n_kv_heads",
             f"({self.n_kv_heads}) must divide {key}.n_heads ({self.n_heads})")
        need((self.d_model // self.n_heads) % 2 == 0, f"{key}.d_model", "/ n_heads must be even for rotary embeddings")
        need(self.rope_theta > 0, f"{key}.rope_theta", "must be positive")
        need(self.rms_eps > 0, f"{key}.rms_eps", "must be positive")


@dataclass
class PTSConfig:
    mode: Literal["adaptive", "fixed"] = "adaptive"
    p_gap: float = 0.2
    gate_low: float = 0.2  # only queries with gate_low <= p(success | query) <= gate_high are searched
    gate_high: float = 0.8
    n_fixed: int = 20
    # Small looks at a lenient level, capped near fixed-20's cost (bench/pts_rollouts.py --verify; figures in
    # bench/README.md).
    batch: int = 4
    max_rollouts: int = 24
    confidence: float = 0.8
    temperature: float = 1.0
    top_p: float = 1.0
    max_response_tokens: int = 256
    max_alternatives: int = 3
    seed: int = 0


@dataclass
class TeacherConfig:
    """A model that writes or judges text for a stage: `synth.teacher` (the LLM workflows), `organic.teacher`
    (labels and rewrites) and `dpo2.judge`. `programmatic` is the offline, rule-based one: it runs no LLM workflow,
    labels and rewrites pages by heuristics, and judges by checking answers."""

    kind: Literal["programmatic", "http", "local"] = "programmatic"
    url: str = ""  # http: the server's OpenAI-compatible base URL, ending in /v1
    model: str = ""  # http: the model name the server knows; local: a phiforge model/run folder or a transformers one
    api_key_env: str = ""  # http: the environment variable that holds the API key (a recipe never holds the key)
    concurrency: int = 8  # http: requests in flight
    batch_size: int = 8  # local: prompts decoded together
    timeout_s: float = 120.0  # http: per request, before a retry
    retries: int = 6  # http: retries of a request refused (429, 5xx) or timed out, with backoff, before it fails
    # local: a Jinja chat template for a transformers folder without one (a base model), and the special tokens
    # that end a turn in it (a base model's end-of-sequence token alone would not)
    chat_template: str = ""
    stop_tokens: list[str] = field(default_factory=list)

    def validate(self, key: str, need) -> None:
        if self.kind == "http":
            need(self.url.startswith(("http://", "https://")), f"{key}.url",
                 f"must be an http(s) URL, got {self.url!r}")
            need(bool(self.model), f"{key}.model", "must name the served model")
        if self.kind == "local":
            need(bool(self.model), f"{key}.model", "must be a phiforge or transformers model folder")
        need(self.concurrency >= 1 and self.batch_size >= 1, f"{key}.concurrency/batch_size", "must be >= 1")
        need(self.timeout_s > 0, f"{key}.timeout_s", "must be positive")
        need(self.retries >= 0, f"{key}.retries", "must be >= 0")


@dataclass
class WorkflowKnobs:
    """What every call of an LLM workflow (phiforge/data/workflows.py) reads."""

    temperature: float = 0.7  # sampled steps; steps that must be faithful (critique, answers to check) too
    max_tokens: int = 512
    exercises: int = 3  # rewrite: exercises asked for per passage
    rounds: int = 1  # revise: critique-and-revise rounds before the final critique
    min_score: int = 3  # revise: lowest final rubric score (1-5) a kept exercise may have
    k: int = 5  # plurality: answers sampled per question
    min_share: float = 0.5  # plurality: the winning answer needs more than this share of the k answers
    # plurality: what follows the question; "" sends the question alone (a small model trained on bare questions)
    answer_instruction: str = "Solve the problem step by step, then write the final answer inside \\boxed{}."
    grounding: float = 0.6  # qa: share of an answer's words that must occur in its passage


@dataclass
class SynthWorkflowsConfig(WorkflowKnobs):
    """Phi-4's LLM workflows on top of the programmatic data, and how much of each; all off by default."""

    seeds: dict[str, int] = field(default_factory=dict)  # workflow -> seeds it starts from, e.g. {rewrite: 20}
    into: Literal["pretrain", "sft"] = "pretrain"  # which corpus the kept samples join
    shard_seeds: int = 500  # seeds per LLM shard: what one worker makes and a crashed run resumes from

    def validate(self, key: str, need) -> None:
        for name, n in self.seeds.items():
            need(name in WORKFLOWS, f"{key}.seeds.{name}", f"is not a workflow ({', '.join(WORKFLOWS)})")
            need(n >= 0, f"{key}.seeds.{name}", "must be >= 0")
        need(self.shard_seeds >= 1, f"{key}.shard_seeds", "must be >= 1")
        need(0 <= self.temperature <= 2, f"{key}.temperature", "must be in [0, 2]")
        need(self.max_tokens >= 1, f"{key}.max_tokens", "must be >= 1")
        need(self.exercises >= 1, f"{key}.exercises", "must be >= 1")
        need(self.rounds >= 0, f"{key}.rounds", "must be >= 0")
        need(1 <= self.min_score <= 5, f"{key}.min_score", "must be in 1..5")
        need(self.k >= 3, f"{key}.k", "must be >= 3 (two answers cannot both agree and disagree)")
        need(0 <= self.min_share < 1, f"{key}.min_share", "must be in [0, 1)")
        need(0 < self.grounding <= 1, f"{key}.grounding", "must be in (0, 1]")


@dataclass
class SynthConfig:
    seed: int = 0
    difficulty: int = 1
    n_pretrain: int = 20000  # problems rendered into pretraining text
    n_sft: int = 8000  # further problems, never in pretraining, rendered as chats for SFT
    n_pts: int = 200  # further problems still, the questions Pivotal Token Search mines for DPO pairs
    shard_size: int = 5000
    domains: dict[str, float] = field(
        default_factory=lambda: {"arithmetic": 1.0, "fractions": 1.0, "linear_equations": 1.0, "number_theory": 1.0}
    )
    styles: dict[str, float] = field(default_factory=lambda: {"textbook": 0.3, "exercise": 0.7})
    workers: int = 1  # processes making programmatic shards at once (the shards do not depend on it)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    workflows: SynthWorkflowsConfig = field(default_factory=SynthWorkflowsConfig)

    def validate(self, key: str, need) -> None:
        need(self.difficulty >= 1, f"{key}.difficulty", "must be >= 1")
        need(self.n_pretrain > 0 and self.n_sft > 0, f"{key}.n_pretrain/n_sft", "must be positive")
        need(self.n_pts >= 0, f"{key}.n_pts", "must be >= 0")
        need(self.shard_size > 0, f"{key}.shard_size", "must be positive")
        need(self.workers >= 1, f"{key}.workers", "must be >= 1")
        _check_mixture(self.domains, f"{key}.domains", need)
        _check_mixture(self.styles, f"{key}.styles", need)
        for d in self.domains:
            need(d in DOMAINS, f"{key}.domains.{d}", f"is not a known domain ({', '.join(DOMAINS)})")
        for st in self.styles:
            need(st in STYLES, f"{key}.styles.{st}", f"is not a known style ({', '.join(STYLES)})")
        if any(self.workflows.seeds.values()):
            need(self.teacher.kind != "programmatic", f"{key}.teacher.kind",
                 f"is programmatic, which cannot run LLM workflows: set it to http or local, or empty "
                 f"{key}.workflows.seeds")
        self.teacher.validate(f"{key}.teacher", need)
        self.workflows.validate(f"{key}.workflows", need)


@dataclass
class TokenizerConfig:
    vocab_size: int = 1024
    min_frequency: int = 2
    max_train_docs: int = 50000  # BPE merges stabilise long before the whole corpus is seen

    def validate(self, key: str, need) -> None:
        need(self.vocab_size >= 256 + 8, f"{key}.vocab_size", "must be at least 264 (256 bytes plus special tokens)")


@dataclass
class OptimConfig:
    lr: float = 3e-3
    final_lr_ratio: float = 0.0  # linear decay ends at lr * final_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0

    def validate(self, key: str, need, steps: int) -> None:
        need(self.lr > 0, f"{key}.lr", "must be positive")
        need(0.0 <= self.final_lr_ratio <= 1.0, f"{key}.final_lr_ratio", "must be in [0, 1]")
        need(self.warmup_steps >= 0, f"{key}.warmup_steps", "must be >= 0")
        stage = key.rsplit(".", 1)[0]
        need(self.warmup_steps < steps, f"{key}.warmup_steps",
             f"({self.warmup_steps}) must be < {stage}.steps ({steps})")
        need(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, f"{key}.beta1/beta2", "must be in [0, 1)")
        need(self.weight_decay >= 0, f"{key}.weight_decay", "must be >= 0")
        need(self.grad_clip >= 0, f"{key}.grad_clip", "must be >= 0 (0 disables clipping)")


@dataclass
class LoopConfig:
    """What the resumable next-token loop (`phiforge.train.pretrain.train_loop`) reads of pretrain and midtrain."""

    seed: int = 0
    seq_len: int = 256
    batch_size: int = 16  # sequences per micro-batch
    grad_accum: int = 1  # micro-batches per optimiser step
    steps: int = 1000
    dtype: Literal["bf16", "fp32"] = "bf16"
    parallel: Literal["ddp", "fsdp"] = "ddp"  # under torchrun: replicate (DDP) or shard per block (FSDP2)
    val_every: int = 250
    val_batches: int = 8
    ckpt_every: int = 250
    keep_checkpoints: int = 2
    log_every: int = 10

    def validate(self, key: str, need) -> None:
        for k in ("batch_size", "grad_accum", "steps", "val_every", "val_batches", "ckpt_every", "keep_checkpoints",
                  "log_every"):
            need(getattr(self, k) > 0, f"{key}.{k}", "must be positive")


@dataclass
class PretrainConfig(LoopConfig):
    optim: OptimConfig = field(default_factory=OptimConfig)
    val_fraction: float = 0.02

    def validate(self, key: str, need) -> None:
        self.optim.validate(f"{key}.optim", need, self.steps)
        super().validate(key, need)
        need(self.seq_len >= 8, f"{key}.seq_len", "must be >= 8")
        need(0 < self.val_fraction < 0.5, f"{key}.val_fraction", "must be in (0, 0.5)")


@dataclass
class DecontamConfig:
    """Phi-4 App. B decontamination of every training sample against the benchmarks of `phiforge benchmark`."""

    # Every benchmark the report scores. deepmind-math's items are one-line questions, so a synthetic question of the
    # same kind shares a fifth of an item's 7-grams through common phrasing alone; allow_min_train_docs below is what
    # keeps those from being flagged. amc-synthetic is generated after training.
    benchmarks: list[str] = field(default_factory=lambda: ["gsm8k100", "gsm-symbolic", "deepmind-math", "champ",
                                                           "humaneval"])
    if_missing: Literal["skip", "error"] = "skip"  # a benchmark whose data package is not installed
    drop_partial: bool = True  # PARTIAL = a fifth or more of an item's 7-grams copied verbatim
    info_threshold: float = 0.2
    contaminated_threshold: float = 0.5
    allow_min_items: int = 10  # n-grams shared by this many benchmark items are boilerplate, never a match
    # Phi-4's allow-list of common n-grams: benchmark n-grams found in this many training documents are common
    # phrasing ("what is the greatest common divisor of"), never a match; 0 = off. Keep it far above how often one
    # leaked item could be copied. With deepmind-math in `benchmarks`, whose items are one-line templates, it is
    # what keeps every programmatic gcd/lcm question from being flagged.
    allow_min_train_docs: int = 20

    def validate(self, key: str, need) -> None:
        for name in self.benchmarks:
            need(name in BENCHMARKS, f"{key}.benchmarks", f"{name!r} is not a benchmark ({', '.join(BENCHMARKS)})")
        need(0 < self.info_threshold <= self.contaminated_threshold <= 1, f"{key}.info_threshold",
             f"({self.info_threshold}) must be in (0, {key}.contaminated_threshold ({self.contaminated_threshold})] "
             "and that at most 1")
        need(self.allow_min_items >= 2, f"{key}.allow_min_items", "must be >= 2")
        need(self.allow_min_train_docs == 0 or self.allow_min_train_docs >= 2, f"{key}.allow_min_train_docs",
             "must be 0 (off) or >= 2: 1 would allow-list every copied item")


@dataclass
class MidtrainConfig(LoopConfig):
    """Context extension (Phi-4 §3.3): continue from the pretrained model at a longer sequence and a higher RoPE base,
    on natively long documents mixed with replayed pretraining windows, at a tenth of the pretraining peak LR."""

    seq_len: int = 512  # the new context; must be <= model.max_seq_len
    batch_size: int = 8
    steps: int = 200
    val_every: int = 50
    val_batches: int = 4
    ckpt_every: int = 50
    rope_theta: float = 40000.0  # the new RoPE base (Phi-4: 10K -> 250K going 4K -> 16K)
    long_fraction: float = 0.3  # share of windows that are whole long documents; the rest replay pretraining text
    lr_scale: float = 0.1  # peak LR = pretrain.optim.lr * lr_scale; the rest of the optimiser is pretrain's
    warmup_steps: int = 20
    bucket: int = 128  # width of the position buckets the loss is reported in
    eval_windows: int = 32  # held-out long documents and replay windows each, for the per-position losses

    def validate(self, key: str, need) -> None:
        need(self.rope_theta > 0, f"{key}.rope_theta", "must be positive")
        need(0.0 <= self.long_fraction <= 1.0, f"{key}.long_fraction", "must be in [0, 1]")
        need(self.lr_scale > 0, f"{key}.lr_scale", "must be positive")
        super().validate(key, need)
        need(0 <= self.warmup_steps < self.steps, f"{key}.warmup_steps",
             f"({self.warmup_steps}) must be >= 0 and < {key}.steps ({self.steps})")
        need(0 < self.bucket <= self.seq_len, f"{key}.bucket",
             f"({self.bucket}) must be in (0, {key}.seq_len ({self.seq_len})]")
        need(self.eval_windows > 0, f"{key}.eval_windows", "must be positive")


# The reference model phiforge can set up itself (phiforge/lm/gemma.py): a recipe may name it as `sft.init`.
GEMMA = "gemma-3-270m"


@dataclass
class LoRAConfig:
    """Low-rank adapters (peft's LoRA) instead of full fine-tuning of a transformers `sft.init` model: only the
    adapters and the chat tokens' rows train; the saved folder has them merged (phiforge/train/lora.py)."""

    r: int = 0  # adapter rank; 0 = full fine-tuning
    alpha: float = 32.0  # the adapters' update is scaled by alpha / r
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                          "up_proj", "down_proj"])

    def validate(self, key: str, need) -> None:
        need(self.r >= 0, f"{key}.r", "must be >= 0 (0 = full fine-tuning)")
        need(self.alpha > 0, f"{key}.alpha", "must be positive")
        need(0.0 <= self.dropout < 1.0, f"{key}.dropout", "must be in [0, 1)")
        need(bool(self.targets), f"{key}.targets", "must name at least one module (e.g. q_proj)")


@dataclass
class SFTConfig:
    seed: int = 0
    batch_size: int = 16
    steps: int = 1500
    max_len: int = 256
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-3, warmup_steps=50, weight_decay=0.0))
    dtype: Literal["bf16", "fp32"] = "bf16"
    log_every: int = 10
    # Batches drawn from windows of this many batches sorted by length, so a batch pads little (sft.batches);
    # 0 = plain shuffled batches.
    length_group: int = 32
    # "" = the run's midtrained model; else a transformers causal-LM folder to fine-tune instead, or "gemma-3-270m"
    # (set up under data/models on first use), saved as a transformers folder that pts and dpo then train further
    init: str = ""
    lora: LoRAConfig = field(default_factory=LoRAConfig)  # r > 0: adapters on the `init` model, merged when saved

    def validate(self, key: str, need) -> None:
        self.optim.validate(f"{key}.optim", need, self.steps)
        self.lora.validate(f"{key}.lora", need)
        need(not self.lora.r or bool(self.init), f"{key}.lora.r",
             f"({self.lora.r}) needs {key}.init: adapters go on a transformers model (0 = full fine-tuning)")
        need(self.batch_size > 0, f"{key}.batch_size", "must be positive")
        need(self.steps > 0, f"{key}.steps", "must be positive")
        need(self.length_group >= 0, f"{key}.length_group", "must be >= 0 (0 = no grouping by length)")
        if self.init and self.init != GEMMA:  # its own context is checked when the stage loads it
            need((Path(self.init) / "config.json").is_file(), f"{key}.init",
                 f"({self.init}) must be a transformers model folder (with config.json), {GEMMA!r} (set up on first "
                 "use), or empty for the run's own model")


@dataclass
class PTSStageConfig(PTSConfig):
    """Pivotal Token Search over the synth `pts` questions, on solutions sampled from the SFT policy."""

    n_queries: int = 40  # how many of the synth.n_pts questions to search
    solutions_per_query: int = 2
    solution_temperature: float = 1.0

    def validate(self, key: str, need) -> None:
        need(0 < self.p_gap < 1, f"{key}.p_gap", "must be in (0, 1)")
        need(0 <= self.gate_low < self.gate_high <= 1, f"{key}.gate_low/gate_high", "must satisfy 0 <= low < high <= 1")
        need(self.n_queries >= 0, f"{key}.n_queries", "must be >= 0")
        need(self.solutions_per_query >= 1, f"{key}.solutions_per_query", "must be >= 1")
        need(self.batch >= 1 and self.max_rollouts >= self.batch, f"{key}.batch/max_rollouts",
             "must satisfy 1 <= batch <= max_rollouts")
        need(0.5 <= self.confidence < 1, f"{key}.confidence", "must be in [0.5, 1)")


@dataclass
class DPOConfig:
    beta: float = 0.1
    epochs: float = 2.0  # passes over the mined pairs; their number is only known after PTS
    batch_size: int = 16
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-5, warmup_steps=0, weight_decay=0.0))
    dtype: Literal["bf16", "fp32"] = "bf16"
    seed: int = 0
    log_every: int = 5

    def validate(self, key: str, need) -> None:
        need(self.beta > 0, f"{key}.beta", "must be positive")
        need(self.epochs > 0 and self.batch_size > 0, f"{key}.epochs/batch_size", "must be positive")
        need(self.optim.lr > 0, f"{key}.optim.lr", "must be positive")


@dataclass
class DPO2Config(DPOConfig):
    """Judge-guided DPO (Phi-4 §4.2) of the PTS-DPO model on pairs of full responses from several policies: the
    DPO round's settings (one epoch here), and where its pairs come from."""

    epochs: float = 1.0
    n_queries: int = 64  # synth `pts` questions after the ones PTS searched
    policies: list[str] = field(default_factory=lambda: ["teacher", "sft", "dpo"])
    samples_per_policy: int = 2  # sampled responses per model policy and question (the teacher gives one)
    temperature: float = 0.8
    max_response_tokens: int = 192
    judge: TeacherConfig = field(default_factory=TeacherConfig)  # programmatic: answers checked, no LLM

    def validate(self, key: str, need) -> None:
        need(len(set(self.policies)) >= 2 and set(self.policies) <= set(POLICIES), f"{key}.policies",
             f"must name at least two of {', '.join(POLICIES)}, got {self.policies}")
        need(self.n_queries >= 1, f"{key}.n_queries", "must be >= 1")
        need(self.samples_per_policy >= 1 and self.max_response_tokens >= 1,
             f"{key}.samples_per_policy/max_response_tokens", "must be >= 1")
        need(self.temperature > 0, f"{key}.temperature", "must be positive (responses are sampled)")
        self.judge.validate(f"{key}.judge", need)
        super().validate(key, need)


# What the eval stage scores, in order; with sft.init: the transformers folder as given ("init"), sft, dpo and dpo2.
EVAL_MODELS = ("untrained", "pretrain", "base", "sft", "dpo", "dpo2", "init")


@dataclass
class EvalConfig:
    seed: int = 1_000_003  # the contest's seed: must differ from synth.seed so training never saw its problems
    n_problems: int = 200
    max_new_tokens: int = 128
    maj_k: int = 5
    temperature: float = 0.7
    top_p: float = 1.0
    batch_size: int = 64
    # The AMC-style contest (phiforge/eval/amc.py): its own seed, apart from synth.seed and the open contest's seed;
    # 0 questions turns it off. A log-likelihood answer is left blank when its option's probability is below
    # amc_blank_below (0.25 = 1.5 / 6 is where answering stops paying on average).
    amc_seed: int = 2_000_003
    amc_n_problems: int = 100
    amc_blank_below: float = 0.25
    amc_normalize: Literal["sum", "mean"] = "sum"
    # Real benchmarks (phiforge/eval/benchmarks.py), greedy and zero-shot, on the listed models: n items each, spread
    # evenly through the set. One whose data is not installed is reported as skipped, with its install command.
    # The defaults are every item phiforge sets up: GSM8K's 100, one GSM-Symbolic variant of each of its templates,
    # and the 16 DeepMind modules x 50, so the report's first table is all the external data there is.
    benchmarks: dict[str, int] = field(default_factory=lambda: {"gsm8k100": 100, "gsm-symbolic": 100,
                                                                "deepmind-math": 800})
    benchmark_models: list[str] = field(default_factory=lambda: ["base", "sft", "dpo2"])
    # A pretrained model scored on the same benchmark items beside the run's own, as a base model (an exercise to
    # solve): Gemma 3 270M where its `gemma` extra is installed (else the report says how), or a transformers
    # folder; "" for none. Its replies are kept per machine, so it costs generation time once.
    reference: str = GEMMA

    def validate(self, key: str, need) -> None:
        need(self.n_problems > 0, f"{key}.n_problems", "must be positive")
        if self.reference and self.reference != GEMMA:
            need((Path(self.reference) / "config.json").is_file(), f"{key}.reference",
                 f"({self.reference}) must be a transformers model folder (with config.json), {GEMMA!r} or \"\"")
        need(self.maj_k >= 1, f"{key}.maj_k", "must be >= 1")
        need(self.temperature > 0, f"{key}.temperature", "must be positive (maj@k samples)")
        need(0 < self.top_p <= 1, f"{key}.top_p", "must be in (0, 1]")
        need(self.max_new_tokens > 0 and self.batch_size > 0, f"{key}.max_new_tokens/batch_size", "must be positive")
        for b, n in self.benchmarks.items():
            need(b in BENCHMARKS, f"{key}.benchmarks.{b}", f"is not a benchmark ({', '.join(BENCHMARKS)})")
            need(n > 0, f"{key}.benchmarks.{b}", "must be a positive number of items")
        for m in self.benchmark_models:
            need(m in EVAL_MODELS, f"{key}.benchmark_models", f"names {m!r}, not one of {', '.join(EVAL_MODELS)}")
        need(self.amc_n_problems >= 0, f"{key}.amc_n_problems", "must be >= 0 (0 turns the AMC contest off)")
        need(0 <= self.amc_blank_below <= 1, f"{key}.amc_blank_below", "must be in [0, 1]")


@dataclass
class LocalTextConfig:
    """A folder of the user's own text (`.txt`/`.md` files, `.jsonl` lines, `.parquet` rows) filed under a source."""

    path: str = ""
    source: Literal["web", "code", "acquired"] = "acquired"
    text_field: str = "text"  # the JSON key / Parquet column holding the text
    max_bytes: int = 0  # 0 = all of it


@dataclass
class OrganicConfig:
    """Stage `organic` (Phi-4 §2.3): real text ingested, cleaned, deduplicated, filtered for educational value, and
    its best web pages rewritten into textbook passages."""

    seed: int = 0
    # feed -> the most UTF-8 bytes it contributes (0 = all): stdlib_code, stdlib_docs, package_pages, pydoc_topics.
    # package_pages is opt-in: it reads whatever is installed, so a default corpus with it would change with the
    # environment; the default feeds depend on the Python version alone.
    feeds: dict[str, int] = field(default_factory=lambda: {"stdlib_code": 2_000_000, "stdlib_docs": 0,
                                                           "pydoc_topics": 0})
    local: list[LocalTextConfig] = field(default_factory=list)
    compression_z: float = 4.0  # a page whose log zlib ratio is this many robust SDs from its feed's median is corrupt
    dedup_threshold: float = 0.8  # estimated Jaccard of word 5-gram sets at which two pages are near-duplicates
    num_perm: int = 128
    edu_threshold: int = 3  # a labeller score (0-5) at or above this is educational
    max_labels: int = 3000  # pages the labeller rates (Phi-4: ~10^6 LLM annotations)
    held_out: float = 0.25  # share of labelled pages kept out of the classifier's training to measure it
    web_keep: float = 0.5  # top share of web pages by classifier score that stays (Phi-4 keeps a small top fraction)
    rewrite_share: float = 0.5  # top share of the kept web pages rewritten into textbook passages
    teacher: TeacherConfig = field(default_factory=TeacherConfig)  # labels and rewrites; programmatic: heuristics
    shard_size: int = 2000

    def validate(self, key: str, need) -> None:
        for name, cap in self.feeds.items():
            need(name in FEEDS, f"{key}.feeds.{name}", f"is not a feed ({', '.join(FEEDS)}; folders go in {key}.local)")
            need(cap >= 0, f"{key}.feeds.{name}", "must be >= 0 bytes (0 = all)")
        for i, loc in enumerate(self.local):
            need(bool(loc.path), f"{key}.local[{i}].path", "must name a folder")
            need(loc.max_bytes >= 0, f"{key}.local[{i}].max_bytes", "must be >= 0 (0 = all)")
        need(self.compression_z > 0, f"{key}.compression_z", "must be positive")
        need(0 < self.dedup_threshold < 1, f"{key}.dedup_threshold", "must be in (0, 1)")
        need(self.num_perm >= 16, f"{key}.num_perm", "must be >= 16")
        need(1 <= self.edu_threshold <= 5, f"{key}.edu_threshold", "must be in [1, 5] (labeller scores are 0-5)")
        need(self.max_labels >= 20, f"{key}.max_labels", "must be >= 20")
        need(0 < self.held_out < 1, f"{key}.held_out", "must be in (0, 1)")
        need(0 < self.web_keep <= 1, f"{key}.web_keep", "must be in (0, 1]")
        need(0 <= self.rewrite_share <= 1, f"{key}.rewrite_share", "must be in [0, 1]")
        self.teacher.validate(f"{key}.teacher", need)
        need(self.shard_size > 0, f"{key}.shard_size", "must be positive")


@dataclass
class MixtureConfig:
    """Table 5: each source's share of the pretraining tokens; epochs = share x budget / unique tokens."""

    seed: int = 0
    shares: dict[str, float] = field(default_factory=lambda: {
        "synthetic": 0.40, "web": 0.15, "web_rewrite": 0.15, "code": 0.20, "acquired": 0.10})
    # repeats above these are warned about before training (Table 5: 13.8, 1.2, 5.2, 2.4, 1.7 epochs)
    max_epochs: dict[str, float] = field(default_factory=lambda: {
        "synthetic": 15.0, "web": 2.0, "web_rewrite": 6.0, "code": 3.0, "acquired": 2.0})
    # at most this many unique training tokens of a source (whole documents, in corpus order; absent = all): a fixed
    # subset that the shares then repeat, as in Phi-4's repetition study (Fig. 2: 4 vs 12 epochs of one subset)
    unique_tokens: dict[str, int] = field(default_factory=dict)

    def validate(self, key: str, need) -> None:
        sources = f"({', '.join(MIXTURE_SOURCES)})"
        for k in self.shares:
            need(k in MIXTURE_SOURCES, f"{key}.shares.{k}", f"is not a source {sources}")
        for k in self.max_epochs:
            need(k in MIXTURE_SOURCES, f"{key}.max_epochs.{k}", f"is not a source {sources}")
            need(self.max_epochs[k] > 0, f"{key}.max_epochs.{k}", "must be positive")
        for k, n in self.unique_tokens.items():
            need(k in MIXTURE_SOURCES, f"{key}.unique_tokens.{k}", f"is not a source {sources}")
            need(n > 0, f"{key}.unique_tokens.{k}", "must be positive (leave a source out to use all of it)")
        _check_mixture(self.shares, f"{key}.shares", need)
        need(self.shares.get("synthetic", 0) > 0, f"{key}.shares.synthetic", "must be positive: the synthetic data is "
             "the point of the recipe, and its held-out documents are what midtraining and validation read")


@dataclass
class Recipe:
    name: str = "tiny"
    synth: SynthConfig = field(default_factory=SynthConfig)
    decontam: DecontamConfig = field(default_factory=DecontamConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    midtrain: MidtrainConfig = field(default_factory=MidtrainConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    pts: PTSStageConfig = field(default_factory=PTSStageConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    dpo2: DPO2Config = field(default_factory=DPO2Config)
    eval: EvalConfig = field(default_factory=EvalConfig)
    organic: OrganicConfig = field(default_factory=OrganicConfig)
    mixture: MixtureConfig = field(default_factory=MixtureConfig)

    def section_hash(self, *sections: str) -> str:
        """A stable digest of the named sections: what a stage's skip decision depends on."""
        blob = json.dumps({s: dataclasses.asdict(getattr(self, s)) for s in sections}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------- loading


RECIPE_RULE = ("a bare name (no '/', no .yaml or .yml suffix) is a recipe shipped with phiforge, even where the "
               "working directory holds a file or folder of that name; anything else is a path to a YAML file "
               "(./NAME for a file without the suffix)")


def resolve_recipe_path(recipe: str | None) -> Path:
    """A recipe is the name of one shipped in phiforge/recipes (`tiny`, `phi4-14b`) or a YAML path: RECIPE_RULE."""
    recipe = recipe or DEFAULT_RECIPE
    path = Path(recipe)
    if path.name != recipe or path.suffix in (".yaml", ".yml"):  # a separator or a YAML suffix: a path
        if not path.is_file():
            raise PhiforgeError(f"recipe file {recipe} {'is not a file' if path.exists() else 'does not exist'}")
        return path
    shipped = RECIPES_DIR / f"{recipe}.yaml"
    if not shipped.is_file():
        names = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
        hint = f" (for the file {recipe}, give ./{recipe})" if path.is_file() else ""
        raise PhiforgeError(f"no recipe named {recipe!r}; shipped recipes: {', '.join(names)}, or give a .yaml "
                            f"path{hint}")
    return shipped


def load_recipe(recipe: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    path = resolve_recipe_path(str(recipe) if recipe is not None else None)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise PhiforgeError(f"recipe {path}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(raw, dict):
        raise PhiforgeError(f"recipe {path}: expected a mapping of sections at the top level")
    for item in overrides:
        apply_override(raw, item)
    return recipe_from_dict(raw, source=str(path))


def apply_override(raw: dict, item: str) -> None:
    """`pretrain.optim.lr=1e-3`: the value is parsed as YAML, so numbers, booleans and lists keep their types."""
    if "=" not in item:
        raise PhiforgeError(f"override {item!r} must look like section.key=value")
    key, _, text = item.partition("=")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    set_key(raw, key.strip(), value)


def set_key(raw: dict, key: str, value: Any) -> None:
    """Set a dotted key (`pretrain.optim.lr`) in a raw recipe mapping, making sections on the way."""
    node = raw
    *parents, leaf = key.split(".")
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise PhiforgeError(f"override {key!r}: {p!r} is not a section")
    node[leaf] = copy.deepcopy(value)


def recipe_from_dict(raw: dict, source: str = "recipe") -> Recipe:
    recipe = _build(Recipe, raw, prefix="", source=source)
    validate(recipe, source)
    return recipe


def save_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.to_dict(), sort_keys=False)


def _build(cls: type, raw: Any, prefix: str, source: str):
    where = prefix.rstrip(".") or "top level"
    if not isinstance(raw, dict):
        raise PhiforgeError(f"{source}: {where} must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in known:
            raise PhiforgeError(
                f"{source}: unknown key '{prefix}{key}' (known in {where}: {', '.join(sorted(known))})"
            )
    kwargs = {}
    for name in known & set(raw):
        kwargs[name] = _coerce(hints[name], raw[name], f"{prefix}{name}", source)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, key: str, source: str):
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key + ".", source)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise PhiforgeError(f"{source}: {key} must be one of {list(typing.get_args(tp))}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, key, source)
    if origin is dict:
        kt, vt = typing.get_args(tp)
        if not isinstance(value, dict):
            raise PhiforgeError(f"{source}: {key} must be a mapping, got {value!r}")
        return {_coerce(kt, k, f"{key}.{k}", source): _coerce(vt, v, f"{key}.{k}", source) for k, v in value.items()}
    if origin in (list, tuple):
        (it, *_) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise PhiforgeError(f"{source}: {key} must be a list, got {value!r}")
        return origin(_coerce(it, v, f"{key}[{i}]", source) for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise PhiforgeError(f"{source}: {key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise PhiforgeError(f"{source}: {key} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads `3e-4` (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PhiforgeError(f"{source}: {key} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise PhiforgeError(f"{source}: {key} must be a string, got {value!r}")
        return value
    raise TypeError(f"config type {tp} of {key} is not supported")  # a bug in phiforge, not in the recipe


# ------------------------------------------------------------------------------------------- validation


def validate(r: Recipe, source: str = "recipe") -> None:
    """Every section checks itself (its `validate`); what ties sections together is checked here."""
    def need(ok: bool, key: str, msg: str) -> None:
        if not ok:
            raise PhiforgeError(f"{source}: {key} {msg}")

    for f in dataclasses.fields(r):
        section = getattr(r, f.name)
        if hasattr(section, "validate"):
            section.validate(f.name, need)
    m, s, p, mt, t, d2, e = r.model, r.synth, r.pretrain, r.midtrain, r.pts, r.dpo2, r.eval
    need(m.vocab_size >= r.tokenizer.vocab_size, "model.vocab_size",
         f"({m.vocab_size}) must be >= tokenizer.vocab_size ({r.tokenizer.vocab_size})")
    need(p.seq_len <= m.max_seq_len, "pretrain.seq_len",
         f"({p.seq_len}) must be <= model.max_seq_len ({m.max_seq_len})")
    need(mt.seq_len <= m.max_seq_len, "midtrain.seq_len",
         f"({mt.seq_len}) must be <= model.max_seq_len ({m.max_seq_len}); raise model.max_seq_len to extend further")
    need(mt.seq_len > p.seq_len, "midtrain.seq_len",
         f"({mt.seq_len}) must be > pretrain.seq_len ({p.seq_len}): midtraining extends the context")
    if not r.sft.init:
        need(r.sft.max_len <= m.max_seq_len, "sft.max_len",
             f"({r.sft.max_len}) must be <= model.max_seq_len ({m.max_seq_len})")
    need(t.n_queries <= s.n_pts, "pts.n_queries", f"({t.n_queries}) must be <= synth.n_pts ({s.n_pts})")
    need(t.n_queries + d2.n_queries <= s.n_pts, "dpo2.n_queries",
         f"({d2.n_queries}) plus pts.n_queries ({t.n_queries}) must be <= synth.n_pts ({s.n_pts}): its questions "
         "are the ones PTS did not use")
    need(e.seed != s.seed, "eval.seed", f"must differ from synth.seed ({s.seed}): the contest must be fresh")
    need(e.amc_seed not in (s.seed, e.seed), "eval.amc_seed",
         f"must differ from synth.seed ({s.seed}) and eval.seed ({e.seed}): the AMC contest must be fresh")


def _check_mixture(weights: dict[str, float], key: str, need) -> None:
    need(len(weights) > 0, key, "must name at least one entry")
    for k, w in weights.items():
        need(w >= 0, f"{key}.{k}", "must be >= 0")
    need(sum(weights.values()) > 0, key, "must have a positive total weight")
