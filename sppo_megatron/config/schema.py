"""The one config schema: structured dataclasses, grouped the way users think about a run.

Each field may carry metadata used by validation:
  choices=(...)       allowed values
  min=/max=           numeric range (inclusive)
  help="..."          one line for `sppo-train --help` and docs/configuration.md
Defaults here are the defaults; `defaults.yaml` is generated from them (tested to match).
The groups are frozen: `load_config` returns a `Config` and each component takes its own groups;
cross-field rules live in rules.py, one function per group.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional, Union

#: platform.dtypes.DTYPES' names (a test keeps them equal); spelled out here so that loading a
#: config, which reward worker processes do, does not import torch
DTYPE_CHOICES = ("auto", "bf16", "fp16", "fp32")


def opt(default: Any, help: str = "", **meta: Any) -> Any:
    """A dataclass field with a default and validation metadata."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **meta})
    return field(default=default, metadata={"help": help, **meta})


#: the linear layers LoRA can adapt (megatron-core names; each maps onto HF names through the bridge tables)
LORA_TARGETS = ("linear_qkv", "linear_proj", "linear_fc1", "linear_fc2")


@dataclass(frozen=True)
class LoraConfig:
    rank: int = opt(0, "LoRA rank r; 0 = off (full fine-tuning); > 0 freezes the base and trains adapters", min=0)
    alpha: float = opt(16.0, "LoRA alpha: the adapter output is scaled by alpha / rank", min=0.0)
    dropout: float = opt(0.0, "dropout on the adapter input (training only)", min=0.0, max=1.0)
    target_modules: List[str] = opt(
        list(LORA_TARGETS),
        "linear layers to adapt: attention q/k/v (linear_qkv) and output (linear_proj), MLP gate/up (linear_fc1) and down (linear_fc2), dense MLPs and shared experts",
        choices=LORA_TARGETS,
    )
    experts: bool = opt(
        False,
        "mixture-of-experts models: adapt the routed experts' linear_fc1 / linear_fc2 too (one adapter per expert)",
    )
    init: str = opt(
        "kaiming",
        "init of A (B starts at zero): kaiming = PEFT's Kaiming-uniform, gaussian = N(0, 1/rank)",
        choices=("kaiming", "gaussian"),
    )


@dataclass(frozen=True)
class ModelConfig:
    path: Optional[str] = opt(
        None, "Hugging Face model directory (config, tokenizer; weights unless megatron_ckpt)", must_exist=True
    )
    megatron_ckpt: Optional[str] = opt(
        None,
        "megatron-core dist checkpoint (`sppo-convert hf-to-megatron`, either layout) or a Megatron-LM checkpoint directory",
        must_exist=True,
    )
    transformer_impl: str = opt("auto", "layer implementation", choices=("auto", "transformer_engine", "local"))
    fp8: Optional[str] = opt(
        None, "FP8 training format (needs Transformer Engine and an FP8-capable GPU)", choices=(None, "e4m3", "hybrid")
    )
    fp8_recipe: str = opt(
        "delayed", "Transformer Engine FP8 scaling recipe", choices=("delayed", "tensorwise", "mxfp8", "blockwise")
    )
    dtype: str = opt("auto", "training precision; auto = bf16 on GPU, fp32 on CPU", choices=DTYPE_CHOICES)
    recompute: str = opt("none", "activation recomputation", choices=("none", "selective", "full"))
    moe_aux_loss_coeff: float = opt(
        0.0,
        "MoE load-balancing (aux) loss coefficient; 0 = off (the RL default); logged as moe/load_balancing_loss",
        min=0.0,
    )
    moe_z_loss_coeff: float = opt(0.0, "MoE router z-loss coefficient; 0 = off; logged as moe/z_loss", min=0.0)
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass(frozen=True)
class ParallelConfig:
    tp: int = opt(1, "tensor-parallel size", min=1)
    pp: int = opt(1, "pipeline-parallel size", min=1)
    ep: int = opt(1, "expert-parallel size (mixture-of-experts models): experts split across this many ranks", min=1)
    etp: int = opt(1, "expert tensor-parallel size: each expert's weights split across this many ranks", min=1)
    sequence_parallel: bool = opt(False, "Megatron sequence parallelism (needs tp > 1)")
    use_distributed_optimizer: bool = opt(True, "shard optimizer state across data-parallel ranks")
    distributed_timeout_minutes: int = opt(30, "collective timeout", min=1)
    peer_timeout_s: float = opt(
        120.0, "a rank whose heartbeat stops this long (killed, hung, node lost) ends the others; 0 = off", min=0.0
    )


@dataclass(frozen=True)
class DataConfig:
    train_files: List[str] = opt([], "training prompt parquet files (verl schema)", must_exist=True)
    val_files: List[str] = opt([], "validation prompt parquet files", must_exist=True)
    prompt_key: str = opt("prompt", "column holding the chat messages")
    train_batch_size: int = opt(8, "prompts per training step (all DP ranks together)", min=1)
    val_batch_size: Optional[int] = opt(None, "prompts per validation generate call; null = all at once", min=1)
    max_prompt_length: int = opt(1024, "maximum prompt tokens", min=1)
    max_response_length: int = opt(512, "maximum generated tokens per response", min=1)
    filter_overlong_prompts: bool = opt(True, "drop (and count) prompts longer than max_prompt_length")
    truncation: str = opt(
        "error", "what to do with an overlong prompt when not filtering", choices=("error", "left", "right")
    )
    apply_chat_template: bool = opt(True, "render prompts with the tokenizer's chat template")
    shuffle: bool = opt(True, "shuffle training prompts each epoch (seeded by trainer.seed)")
    oversample_factor: float = opt(
        1.0,
        "dynamic sampling (algorithm.filter_no_signal): each generation round draws this many times the prompts still missing from the batch (> 1 = fewer extra rounds, more prompts generated for and dropped)",
        min=1.0,
    )


@dataclass(frozen=True)
class RolloutConfig:
    engine: str = opt(
        "auto",
        "rollout engine; auto = sglang with a GPU, hf without; vllm only when named; on the CPU sglang and vllm need tools/install_cpu_engines.sh",
        choices=("auto", "sglang", "vllm", "hf"),
    )
    n: int = opt(4, "samples per prompt (K); SPPO needs >= 2 unless algorithm.preference=batch_softmean", min=1)
    temperature: float = opt(1.0, "sampling temperature", min=0.0)
    top_p: float = opt(1.0, "nucleus sampling", min=0.0, max=1.0)
    top_k: int = opt(-1, "top-k sampling; -1 = off", min=-1)
    val_temperature: float = opt(0.0, "validation temperature; 0 = greedy", min=0.0)
    val_top_p: float = opt(1.0, "validation nucleus sampling", min=0.0, max=1.0)
    val_n: int = opt(1, "validation samples per prompt", min=1)
    tp: int = opt(1, "rollout engine tensor-parallel size (ranks per SGLang / vLLM engine)", min=1)
    mem_fraction: float = opt(
        0.5,
        "GPU memory fraction of the engine (SGLang mem_fraction_static, vLLM gpu_memory_utilization)",
        min=0.0,
        max=1.0,
    )
    kv_cache_mb: int = opt(
        0,
        "KV cache of each SGLang / vLLM engine in MB; 0 = from rollout.mem_fraction on a GPU, 256 MB on the CPU (where the engines would size it from the whole machine's free RAM)",
        min=0,
    )
    sync_bucket_mb: int = opt(512, "weight-sync bucket size in MB", min=1)
    max_extra_rounds: int = opt(
        2,
        "dynamic sampling (algorithm.filter_no_signal): generation rounds a step may add to refill the prompts it dropped; when the bound is hit the step trains on the prompts it has (and says so); 0 = never refill; off_policy_steps=1 never refills (its next batch is already generating)",
        min=0,
    )
    dtype: str = opt("auto", "rollout engine dtype; auto = bf16 on GPU, fp32 on CPU", choices=DTYPE_CHOICES)
    placement: str = opt(
        "colocated",
        "colocated: the engine shares the training ranks, phases alternate; separate: the last rollout.num_ranks ranks host the engine, weights are broadcast to them in buckets",
        choices=("colocated", "separate"),
    )
    num_ranks: int = opt(
        0, "ranks hosting the rollout engine with placement=separate (the others train); 0 with colocated", min=0
    )
    off_policy_steps: int = opt(
        0,
        "placement=separate: 1 = the rollout ranks generate batch t+1 with the weights of step t while the training ranks train on batch t",
        choices=(0, 1),
    )


@dataclass(frozen=True)
class AlgorithmConfig:
    preference: str = opt(
        "pairwise",
        "how rewards become win rates; matrix = the oracle's K x K preference matrix (reward.source=pairwise | judge | remote)",
        choices=("pairwise", "bradley_terry", "batch_softmean", "matrix"),
    )
    eta: float = opt(1.0, "SPPO step size eta (targets are eta * (P_hat - 1/2))", min=0.0)
    loss: str = opt(
        "soft",
        "sample selection: all samples, best/worst pair, or the pair with hard targets",
        choices=("soft", "pair", "hard"),
    )
    include_self: bool = opt(False, "count P(y_i > y_i) = 1/2 in the win rate, as the original implementation")
    bt_beta: float = opt(1.0, "Bradley-Terry temperature for preference=bradley_terry", min=0.0)
    filter_no_signal: Union[bool, str] = opt(
        "auto",
        "dynamic sampling: leave prompts whose K rewards (win rates for preference=matrix) all tie out of the update, their SPPO targets are all 0; auto = on for reward.source=rule (0/1 scores tie often; model scores rarely, and extra rounds cost oracle passes)",
        choices=("auto", True, False),
    )


@dataclass(frozen=True)
class RewardConfig:
    source: str = opt(
        "rule",
        "the preference oracle: rule-based scorers (or custom_fn), a scalar reward model, a pairwise preference model (PairRM format), a generative judge, or a remote HTTP scorer",
        choices=("rule", "reward_model", "pairwise", "judge", "remote"),
    )
    model_path: Optional[str] = opt(
        None,
        "Hugging Face directory of the oracle model (reward_model: a one-label sequence classifier; pairwise: PairRM format; judge: a causal LM)",
        must_exist=True,
    )
    batch_size: int = opt(
        8, "oracle sequences (reward_model) or pairs (pairwise, judge) per forward; samples per request (remote)", min=1
    )
    max_length: int = opt(
        2048,
        "oracle input tokens. reward_model, judge: longer inputs keep their last max_length tokens; pairwise: PairRM's budget, the prompt cut to max_length x 1224/2048 tokens and each response to half of what it leaves, the first tokens kept (llm-blender's 1224 + 2 x 412 at 2048)",
        min=8,
    )
    dtype: str = opt("auto", "oracle model dtype; auto = bf16 on GPU, fp32 on CPU", choices=DTYPE_CHOICES)
    trust_remote_code: bool = opt(False, "let transformers run the oracle checkpoint's own modelling code")
    pairwise_prob: str = opt(
        "sppo",
        "pairwise: P from PairRM's logits l_ij; sppo = uclaml/SPPO's, from llm-blender's rank scores s_i = mean_j (l_ij - l_ji): P_ij = 1 / (1 + exp(s_j - s_i)); pair = sigmoid((l_ij - l_ji) / 2) per pair (docs/reward.md)",
        choices=("sppo", "pair"),
    )
    pairwise_prompt_template: Optional[str] = opt(
        "${model.path}",
        "pairwise: tokenizer directory whose chat template renders the prompt PairRM reads, cut where the answer starts (uclaml/SPPO scripts/rank.py: the policy's); null = the message contents, one per line",
        must_exist=True,
    )
    judge_template: Optional[str] = opt(
        None,
        "judge prompt with {prompt}, {response_a}, {response_b}; null = the shipped template (reward/oracles/judge.py)",
    )
    judge_choices: List[str] = opt(
        ["A", "B"], "the judge's two verdict words (first token of each): response A better, response B better"
    )
    url: Optional[str] = opt(None, "reward.source=remote: HTTP endpoint receiving a JSON batch by POST")
    request_timeout_s: float = opt(60.0, "reward.source=remote: seconds to wait for one response", min=0.0)
    retries: int = opt(3, "reward.source=remote: attempts after the first failed one", min=0)
    backoff_s: float = opt(1.0, "reward.source=remote: wait before the first retry, doubled after each", min=0.0)
    custom_fn: Optional[str] = opt(
        None,
        "path/to/file.py:function, called like verl's compute_score(data_source=, solution_str=, ground_truth=, extra_info=) -> float (it may take a subset)",
    )
    timeout_s: float = opt(1.0, "per-sample scoring time limit (seconds)", min=0.0)
    num_workers: int = opt(2, "scoring worker processes", min=1)
    max_error_frac: float = opt(
        0.1,
        "a step where more than this fraction of samples errored or timed out prints a warning with the first error",
        min=0.0,
        max=1.0,
    )
    max_bad_steps: int = opt(
        3,
        "stop the run (exit 1) after this many steps in a row with more than max_error_frac failed reward samples (trainer.max_bad_steps counts non-finite updates)",
        min=1,
    )


@dataclass(frozen=True)
class OptimConfig:
    lr: float = opt(1e-6, "peak learning rate", min=0.0)
    min_lr: float = opt(0.0, "final learning rate of the cosine schedule", min=0.0)
    lr_decay_style: str = opt("constant", "after warmup", choices=("constant", "cosine"))
    lr_warmup_steps: int = opt(0, "linear warmup, in optimizer steps", min=0)
    lr_warmup_ratio: float = opt(
        0.0, "linear warmup as a fraction of all optimizer steps (used when lr_warmup_steps = 0)", min=0.0, max=1.0
    )
    weight_decay: float = opt(0.01, "AdamW weight decay", min=0.0)
    adam_beta1: float = opt(0.9, "", min=0.0, max=1.0)
    adam_beta2: float = opt(0.999, "", min=0.0, max=1.0)
    adam_eps: float = opt(1e-8, "", min=0.0)
    clip_grad: float = opt(1.0, "global gradient-norm clip; 0 = off", min=0.0)


@dataclass(frozen=True)
class TrainConfig:
    mini_batch_size: int = opt(8, "prompts per optimizer step (each with its rollout.n samples)", min=1)
    micro_batch_size: int = opt(1, "samples per micro-batch per data-parallel rank", min=1)
    max_tokens_per_micro_batch: Optional[int] = opt(
        None, "token budget per micro-batch (dynamic batching); overrides micro_batch_size", min=1
    )
    logprob_micro_batch_size: Optional[int] = opt(
        None, "samples per micro-batch of forward-only passes (old log-probs); null = micro_batch_size", min=1
    )
    logprob_max_tokens: Optional[int] = opt(
        None,
        "token budget per micro-batch of forward-only passes; overrides logprob_micro_batch_size; null = as the update",
        min=1,
    )
    epochs_per_rollout: int = opt(1, "passes over each rollout batch", min=1)


@dataclass(frozen=True)
class TrainerConfig:
    total_steps: int = opt(1, "training steps (each = one rollout batch)", min=0)
    output_dir: str = opt("outputs/run", "run directory: config.yaml, metrics.jsonl, checkpoints/")
    seed: int = opt(1234, "seed for python, numpy, torch, megatron RNG and data order", min=0)
    resume: str = opt("auto", "auto (from checkpoints/latest), none, or a checkpoint path")
    resume_accept: List[str] = opt(
        [],
        "keys (or groups) a resumed run may change although they must match the checkpoint's config (README: what a resume may change)",
    )
    overwrite: bool = opt(False, "allow resume=none into an output_dir holding another run's checkpoints")
    save_freq: int = opt(0, "checkpoint every N steps (and at the end); 0 = only at the end", min=0)
    keep_last: int = opt(2, "checkpoints to keep", min=1)
    test_freq: int = opt(
        0, "validate every N steps (and always after the last step); 0 = only after the last step", min=0
    )
    val_before_train: bool = opt(True, "validate at step 0")
    logger: List[str] = opt(["console"], "console, tensorboard, wandb", choices=("console", "tensorboard", "wandb"))
    project_name: str = opt("sppo", "wandb project")
    experiment_name: str = opt("run", "wandb / tensorboard run name")
    log_samples_freq: int = opt(0, "write sample generations to samples.jsonl every N steps; 0 = never", min=0)
    max_bad_steps: int = opt(
        3,
        "stop the run (exit 1) after this many steps in a row whose update was skipped for a non-finite loss or gradient (reward.max_bad_steps counts failing rewards)",
        min=1,
    )
    export_hf: bool = opt(False, "write a Hugging Face checkpoint to output_dir/hf at the end")


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


GROUP_HELP = {
    "model": "HF model, Megatron checkpoint, layer implementation, precision, FP8, recomputation, LoRA adapters (model.lora)",
    "parallel": "tensor / pipeline parallel sizes (data parallel = training ranks / (tp * pp))",
    "data": "prompt parquet files, batch size, prompt/response lengths, chat template, oversampling",
    "rollout": "rollout engine (sglang | vllm | hf), samples per prompt, sampling, weight-sync buckets, refill rounds, placement (colocated | separate), off-policy overlap",
    "algorithm": "SPPO preference model, eta, loss variant, no-signal filtering",
    "reward": "the preference oracle (rule | reward_model | pairwise | judge | remote); rule-based scoring: time limit, workers, custom function",
    "optim": "AdamW, learning-rate schedule, gradient clipping",
    "train": "mini-batches per rollout, micro-batching, epochs per rollout",
    "trainer": "steps, output directory, seed, checkpoints, resume, evaluation, logging",
}
