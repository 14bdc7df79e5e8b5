r"""Qwen3 and Mistral-7B judges on the Prometheus data (Feedback Collection -> FB Bench, FLASK, Vicuna, MT Bench).

Command (one host; on a multi-host slice every host runs the same command with --multihost
and a workdir on a filesystem all hosts share, e.g. NFS or a gcsfuse mount):

  python -m real_jax.main --config configs/prometheus.py:size=8b,method=real \
      --workdir /ckpt/qwen3-8b-real \
      --config.model.hf_dir=/models/Qwen3-8B-RAFT \
      --config.data.manual_dir=/data/prometheus

`:arg` keys: size=0.6b|1.7b|4b|8b|14b|32b|mistral-7b (default 8b), method=sft|raft|tract|grpo|real|eval
(default real), beta=<float> (REAL's refinement weight; default 0.01, the authors' README best;
their scripts ship 0), hf_dir=, manual_dir= (same as the --config.* overrides), runlocal,
lora=R (LoRA of rank R on every projection, alpha 2R, the frozen base in bfloat16; default 0 =
full fine-tuning), qlora (LoRA with the frozen projections stored int8; rank 16 unless lora=R).
The plan tool's reports for 8b LoRA and QLoRA are in docs/scale.md ("LoRA and QLoRA").

`runlocal`: the real-data path on one CPU in about a minute — the same datasets, prompt
template, readouts and tables, with the committed synthetic base (tiny-1m and its word-level
tokenizer, which reads most real words as <unk>, so the numbers mean nothing) unless hf_dir= names
a small Hugging Face model, 2 steps of every stage, 4 items per evaluation split:

  python -m real_jax.main --config configs/prometheus.py:runlocal --workdir workdirs/prometheus_local \
      --config.data.manual_dir=tests/fixtures/judge_data

Inputs (local files, nothing is downloaded): `model.hf_dir` a Hugging Face Qwen3 or Mistral
directory (for REAL, the RAFT/TRACT-initialised judge, as the authors do: Qwen3 from RAFT,
Mistral-7B-Instruct-v0.2 from TRACT, `yasiz/Mistral-7b-v0.2-Instruct-TRACT-copy`); `data.manual_dir` the Prometheus /
TRACT files (see `real_jax.data.builders` for the file names). Without hf_dir the preset's
architecture is randomly initialised (throughput tests only).

Hardware and mesh (per size; override with --config.mesh.*). Every row fits its named TPU slice
with at least 10% of HBM free per chip, by `python -m real_jax.tools.plan` (docs/scale.md, "Will it
fit?"); slice names count v5p TensorCores (v5p-8 = 4 chips) and v5e chips:
  0.6b, 1.7b  8 v5e chips (v5e-8) or 8 GPUs, FSDP over all chips    (fsdp=-1)
  4b, 8b      4 v5p chips (v5p-8), or 8 v5p chips / 8 H100 80GB (GPU: estimated), FSDP (fsdp=-1)
  mistral-7b  4 v5p chips (v5p-8), or 8 v5p chips / 8 H100 80GB (GPU: estimated), FSDP (fsdp=-1)
  14b, 32b    16 v5p chips (v5p-32) or 16 H100, FSDP 8 x tensor 2   (fsdp=8, tensor=2)
GPUs: `plan --gpu h100:8` (16 for 14b/32b) estimates each program per GPU (analytic, with factors
calibrated on the TPU compiles, not on any GPU; JAX cannot compile for a GPU without one): by that
estimate, not calibrated for GPU, every size fits the H100 count named above.

Hyperparameters are the authors' (docs/architecture.md, A3): REAL/GRPO: 256 prompts per
update, n=16 (8 at 32b), T=1.0, top-p 0.9, prompt <= 2048, response <= 1024, AdamW (0.9, 0.999),
wd 0.01, constant LR 1e-6 (5e-8 for Mistral-7B, run_real.sh), clip 1.0, 3 epochs per update, lam=1 with the probability as the
shaping reward, "partial" filter with a 256-prompt buffer, evaluation and checkpoints every 10
updates. REAL's advantages are the authors' recipe (leave-one-out, / population std, clip +-1;
REINFORCE, token-mean); standard RL (method=grpo) is GRPO as DeepSeek / verl define it (group
mean, / sample std + 1e-6, no clipping, PPO ratio with eps 0.2; the authors' binary-RLOO ablation
is --config.rl.advantage=authors). Each results row names the recipe it used. SFT baselines
(sft/raft/tract): LR 1e-5, betas (0.9, 0.95), 10% warm-up then cosine, 3 epochs of batch 256 (2 for
Mistral-7B, TRACT's Mistral recipe). Mistral prompts render with its own template
(`<s>[INST] ... [/INST]`); its SentencePiece tokenizer writes " 4" as "▁" "4", and the score
tokens are derived from the tokenizer (real_jax.judge.scores), never hard-coded.
Prompts are rendered as the authors' (the chat template without an enable_thinking argument:
no <think> block for Qwen3); prompts over 2048 tokens are skipped and reported per split
(--config.data.overlong=truncate for the authors' left truncation). 1,000 Feedback Collection
records are held out as the validation split; the best checkpoint is chosen on it, never on a
benchmark.

Expected (paper Table 2, Pearson x 100, average of the 4 benchmarks, RAIL readout): Qwen3-32B
base 52.7 -> RAFT 62.6 -> REAL 71.0; Mistral-7B RAFT 55.6, TRACT 63.2 -> standard RL 64.1 -> REAL
67.9 (the 8B rows are not published). Wall-clock: not measured
here (no accelerator in this project's CI).
"""

import os

from real_jax.train import config_lib

# runlocal's model when no hf_dir is given: the committed synthetic base (configs/synthetic.py).
SYNTHETIC_BASE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "assets", "synthetic_base")

SIZES = ("0.6b", "1.7b", "4b", "8b", "14b", "32b", "mistral-7b")
MICRO_BATCH = {"0.6b": 32, "1.7b": 16, "4b": 16, "8b": 16, "14b": 8, "32b": 8, "mistral-7b": 16}
# Prompts per sampler call (x rl.group_size rows): the rollout's KV cache per chip (plan tool).
SAMPLE_PROMPTS = {"0.6b": 32, "1.7b": 32, "4b": 64, "8b": 64, "14b": 64, "32b": 64,
                  "mistral-7b": 64}
# (data, fsdp, tensor); -1 = every remaining chip.
MESH = {"0.6b": (1, -1, 1), "1.7b": (1, -1, 1), "4b": (1, -1, 1), "8b": (1, -1, 1),
        "14b": (-1, 8, 2), "32b": (-1, 8, 2), "mistral-7b": (1, -1, 1)}
# The authors' REAL learning rate (run_real.sh / run_real_32B.sh) and SFT epochs (TRACT's yaml).
RL_LR = {"mistral-7b": 5e-8}
SFT_EPOCHS = {"mistral-7b": 2}


def get_config(arg=None):
  a = config_lib.parse_arg(arg, size="8b", method="real", beta=0.01, hf_dir="", manual_dir="",
                           runlocal=False, lora=0, qlora=False)
  if a.size not in SIZES:
    raise config_lib.ConfigError(f"size={a.size!r}; expected one of {SIZES}")
  c = config_lib.base_config()
  c.method = a.method
  c.model.preset = a.size if a.size == "mistral-7b" else f"qwen3-{a.size}"
  c.model.hf_dir = a.hf_dir
  c.model.dtype = "bfloat16"
  c.model.param_dtype = "float32"
  c.model.remat = "full"

  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = MESH[a.size]
  if a.lora or a.qlora:  # LoRA (TRACT's recipe: every projection), alpha = 2 x rank
    c.model.lora.rank = int(a.lora) or 16
    c.model.lora.alpha = 2.0 * c.model.lora.rank
    c.model.param_dtype = "bfloat16"  # the frozen base; the adapters train in float32
    c.model.lora.quantize = "int8" if a.qlora else ""

  c.data.name = "feedback_collection"
  c.data.manual_dir = a.manual_dir
  c.data.eval_splits = "feedback_bench,flask,vicuna_bench,mt_bench"
  c.data.max_prompt_len = 2048
  c.data.max_target_len = 1024
  c.data.output_format = "score_phrase"
  c.data.enable_thinking = ""  # not passed to the chat template, as the authors' prompts
  c.data.val_size = 1000  # Feedback Collection records held out to select checkpoints on

  micro = MICRO_BATCH[a.size]
  # SFT-style baselines (authors' sft.sh): 3 epochs (Mistral: 2) of ~100K rows at batch 256.
  c.train.steps = 390 * SFT_EPOCHS.get(a.size, 3)
  c.train.batch_size = 256
  c.train.micro_batch_size = micro
  c.train.lr = 1e-5
  c.tract.num_prompts = 0
  if a.method in ("sft", "raft", "tract"):
    c.optim.b2 = 0.95
    c.optim.schedule = "cosine"
    c.optim.warmup_steps = c.train.steps // 10

  # REAL / standard RL (run_real.sh, run_real_32B.sh).
  c.optim.lr = RL_LR.get(a.size, 1e-6)
  c.rl.steps = 100
  c.rl.prompts_per_step = 256
  c.rl.group_size = 8 if a.size == "32b" else 16
  c.rl.buffer_size = 256
  c.rl.max_rounds = 16
  c.rl.filter = "partial"
  c.rl.epochs = 3
  c.rl.mini_batch_size = 256 * c.rl.group_size // (1 if a.size == "32b" else 4)
  c.rl.micro_batch_size = micro
  c.rl.sample_prompts = SAMPLE_PROMPTS[a.size]
  c.rl.temperature = 1.0
  c.rl.top_p = 0.9
  c.rl.max_response_len = 1024
  c.rl.beta = a.beta
  c.rl.lam = 1.0
  c.rl.shaping = "prob"
  c.rl.shaping_weight = 1.0
  c.rl.renormalize = False
  # Advantages and policy loss: each method's default (config_lib.rl_settings). REAL: the
  # authors' recipe (leave-one-out, / population std, clip +-1; plain REINFORCE). GRPO: group
  # mean, / (sample std + 1e-6), no clip, PPO ratio (clip 0.2) over the 3 epochs.
  c.rl.advantage = ""
  c.rl.policy_loss = ""

  c.eval.every = 10 if a.method in ("grpo", "real") else 200
  c.eval.batch_size = 64
  c.eval.temperature = 1.0
  c.eval.top_p = 0.9
  c.eval.max_response_len = 1024
  c.eval.after_warmup = False
  c.eval.before_training = a.method in ("grpo", "real")
  c.checkpoint.every = 10 if a.method in ("grpo", "real") else 200
  c.log.every = 10
  if a.runlocal:
    _runlocal(c, a)
  return c


def _runlocal(c, a):
  """A few steps of every stage on one CPU device, with small batches (see the docstring)."""
  c.model.preset = "tiny-1m"
  c.model.hf_dir = a.hf_dir or SYNTHETIC_BASE
  c.data.tokenizer = "" if a.hf_dir else SYNTHETIC_BASE
  c.model.dtype = c.model.param_dtype = "float32"
  c.model.remat = "none"
  c.mesh.data = c.mesh.fsdp = c.mesh.tensor = 1
  c.data.max_prompt_len = 1024
  c.data.max_target_len = 256
  c.data.val_size = 0  # the fixtures hold 3 usable training rows (their other 5 are bad on purpose)
  c.optim.lr = 1e-4
  c.optim.warmup_steps = 0
  c.train.steps = 2
  c.train.batch_size = 2
  c.train.micro_batch_size = 1
  c.train.lr = 1e-4
  c.tract.stage1_steps = c.tract.stage2_steps = 2
  c.rl.steps = 2
  c.rl.prompts_per_step = 2
  c.rl.group_size = 4
  c.rl.buffer_size = 2
  c.rl.max_rounds = 1
  c.rl.filter = "all"  # too few prompts for the authors' "partial" filter
  c.rl.epochs = 1
  c.rl.mini_batch_size = 8
  c.rl.micro_batch_size = 4
  c.rl.sample_prompts = 0
  c.rl.max_response_len = 32
  c.eval.max_items = 4
  c.eval.batch_size = 4
  c.eval.max_response_len = 32
  c.eval.every = 0
  c.eval.before_training = False
  c.checkpoint.every = 1
  c.log.every = 1
