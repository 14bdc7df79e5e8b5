"""The config schema of `python -m real_jax.main`: every field with its default and meaning, the
choices and ranges each field accepts, and reading a config (files, `:arg`, `--set a.b=v`).

Every config file (`configs/*.py`) starts from `base_config()`, which lists every field with its
default and, in a comment, its meaning (`field_docs`, shown by `--help` and `--print_config`).
`CHOICES` and `RANGES` below say what each enumerated or numeric field accepts; `validation`
checks them and the cross-field rules before anything is built.

Batch sizes are counted in *rows* (sequences) unless the name says prompts. The batch of every
jitted step is split over the mesh's batch axes (data x fsdp), so each of these must be a multiple
of that size (and of the micro-batch count): `train.batch_size`, `warmup.batch_size`,
`rl.mini_batch_size`, `rl.prompts_per_step * rl.group_size`, `eval.batch_size`.
"""

from __future__ import annotations

import importlib.util
import inspect
import io
import os
import re
import tokenize
from typing import Any, Callable, Mapping

import ml_collections

from real_jax import objectives as obj  # fills the registries
from real_jax import readout, registry
from real_jax.data import batching
from real_jax.judge.formats import OutputFormat
from real_jax.models import attention as attention_lib
from real_jax.models import qwen3
from real_jax.train import methods as methods_lib
from real_jax.train import state as state_lib
from real_jax.train import wandb_log

__all__ = ["ConfigDict", "ConfigError", "parse_bool", "parse_arg", "load_config", "get_field",
           "assign", "set_field", "base_config", "CHOICES", "RANGES", "INVALID_RULES", "field_docs",
           "describe", "flatten"]

ConfigDict = ml_collections.ConfigDict

# Rows of an RL update without a score (no delimiter): penalize (a constant reward, kept in the
# policy-gradient term) | drop (out of both terms and the group baselines); train/rl.py.
INVALID_RULES = ("penalize", "drop")


class ConfigError(ValueError):
  """A config that cannot run; the message says which field and what to change."""


def parse_bool(text: str, *, empty: bool = False) -> bool:
  """"true" / "1" / "yes" -> True, "false" / "0" / "no" -> False (any case); "" -> True when
  `empty` (a bare `:flag` in a config argument). Anything else: ValueError."""
  v = text.strip().lower()
  if v in ("true", "1", "yes") or (empty and v == ""):
    return True
  if v in ("false", "0", "no"):
    return False
  raise ValueError(f"{text!r} is not a boolean")


_MISSING = object()


def get_field(config: Any, path: str, default: Any = _MISSING) -> Any:
  """`config.<path>` for a dotted path (a ConfigDict or a plain dict, e.g. a run.json's config);
  `default` when a part is missing (KeyError naming the path when no default is given)."""
  node = config
  for part in path.split("."):
    try:
      node = node[part]
    except (KeyError, TypeError):
      if default is _MISSING:
        raise KeyError(f"no config field {path!r}") from None
      return default
  return node


def assign(config: Any, path: str, value: Any) -> None:
  """`config.<path> = value` for a dotted path (no parsing: the value as given)."""
  parent, _, leaf = path.rpartition(".")
  (get_field(config, parent) if parent else config)[leaf] = value


def parse_arg(arg: str | None, **defaults) -> ConfigDict:
  """big_vision's `parse_arg`: "size=8b,method=real,runlocal" -> typed ConfigDict.

  Each key must be in `defaults`; the value is converted to the default's type ("" or a bare
  key means True for bools).
  """
  out = ConfigDict(dict(defaults))
  if not arg:
    return out
  for item in arg.split(","):
    if not item:
      continue
    key, _, value = item.partition("=")
    key = key.strip()
    if key not in defaults:
      raise ConfigError(f"unknown config argument {key!r} in {arg!r}; known: {sorted(defaults)}")
    default = defaults[key]
    if isinstance(default, bool):
      try:
        out[key] = parse_bool(value, empty=True)
      except ValueError:
        raise ConfigError(f"config argument {key}={value!r} is not a boolean") from None
    elif isinstance(default, int):
      out[key] = int(value)
    elif isinstance(default, float):
      out[key] = float(value)
    else:
      out[key] = value
  return out




def load_config(spec: str) -> ConfigDict:
  """The ConfigDict of "path/to/config.py[:arg]" (what `--config` takes), for tools and notebooks."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise ConfigError(f"config file {path!r} not found (expected path/to/config.py[:arg])")
  module = importlib.util.spec_from_file_location(
      "real_jax_config_" + os.path.basename(path)[:-3], path)
  mod = importlib.util.module_from_spec(module)
  module.loader.exec_module(mod)
  return mod.get_config(arg or None)


def set_field(config: ConfigDict, path: str, value: str) -> None:
  """`config.<path> = value`, the string parsed as the field's type (tools' `--set a.b=v`)."""
  parent, _, leaf = path.rpartition(".")
  node = get_field(config, parent) if parent else config
  if not isinstance(node, (ConfigDict, ml_collections.FrozenConfigDict)) or leaf not in node:
    raise ConfigError(f"unknown config field {path!r}")
  old = node[leaf]
  try:
    if isinstance(old, bool):
      new = parse_bool(value)
    elif isinstance(old, int):
      new = int(value)
    elif isinstance(old, float):
      new = float(value)
    else:
      new = value
  except ValueError:
    raise ConfigError(f"{path}={value!r} is not a {type(old).__name__}") from None
  node[leaf] = new



def base_config() -> ConfigDict:
  """Every field of a run config, with its default. Configs override values, never add fields."""
  c = ConfigDict()
  c.method = "real"  # a job of the method table (train/methods.py)
  c.seed = 0  # model init, data order, rollouts and evaluation draws
  c.name = ""  # row label in result tables ("" -> method)

  # Model: a preset (random init) or a Hugging Face directory.
  c.model = ConfigDict()
  # a models.presets name: tiny, tiny-1m, cpu-29m, qwen3-0.6b ... qwen3-32b, mistral-7b
  c.model.preset = "tiny-1m"
  c.model.hf_dir = ""  # load weights + architecture from here (overrides the preset)
  c.model.vocab_size = 0  # 0: the preset's; -1: the tokenizer's size rounded up to 64
  c.model.dtype = ""  # "" keeps the preset's / checkpoint's (float32 | bfloat16)
  c.model.param_dtype = ""  # master weights: "" keeps the preset's / checkpoint's
  c.model.remat = ""  # "" keeps the preset's; none | full | dots
  c.model.scan_layers = True  # lax.scan over the layers (flat compile time); False unrolls
  # The full forward's attention kernel: auto (splash on TPU, xla on GPU, chunked on CPU) |
  # chunked (query-chunked XLA, the reference) | xla | cudnn (GPU, bf16) | splash (TPU Pallas).
  # The decode step is the same on every backend (docs/model.md).
  c.model.attention = "auto"
  # LoRA (docs/training.md#lora): rank > 0 adds adapters A [L, in, rank], B [L, rank, out] (B
  # zero) to each target projection of every layer and trains only them (the optimizer holds
  # the nnx.LoRAParam variables; the base stays frozen and is the KL reference).
  c.model.lora = ConfigDict()
  c.model.lora.rank = 0  # 0 = full fine-tuning
  c.model.lora.alpha = 16.0  # the update is (alpha / rank) * x A B
  c.model.lora.targets = "all"  # all | comma list of q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj
  c.model.lora.quantize = ""  # QLoRA: int8 stores the frozen targets int8 (a scale per output channel)

  # Device mesh: sizes of the (data, fsdp, tensor) axes; -1 = all remaining devices.
  c.mesh = ConfigDict()
  c.mesh.data = -1  # data-parallel replicas (the batch is split over data x fsdp)
  c.mesh.fsdp = 1  # parameters, gradients and optimizer state sharded over these
  c.mesh.tensor = 1  # heads / MLP / vocabulary split over these (Megatron-style)

  # Where to start from (besides model.hf_dir): a previous run's workdir or checkpoint
  # directory (its final parameters). Used by method=eval and to chain runs.
  c.init = ConfigDict()
  c.init.checkpoint = ""  # a workdir or a ckpt/<stage> directory ("" = none)
  c.init.stage = ""  # which stage of that workdir ("" = its last)
  c.init.best = False  # take that run's best-by-eval parameters instead of its last

  # Data.
  c.data = ConfigDict()
  # synthetic | feedback_collection (the Prometheus data, from data.manual_dir)
  c.data.name = "synthetic"
  c.data.manual_dir = ""  # local files of the real datasets
  c.data.data_dir = ""  # TFDS data_dir ("" -> <workdir>/tfds)
  c.data.tokenizer = ""  # HF tokenizer dir ("" -> synthetic: built in the workdir; else model.hf_dir)
  # score_phrase (the judge ends "So the overall score is N") | result ("[RESULT] N")
  c.data.output_format = "score_phrase"
  # The score scale: "1-5" (the paper's) | "0-4" | "1-10" | "0-1" | labels "1,3,5" (non-negative
  # integers). It drives the prompt's rules and rubric, the score tokens, parsing, targets,
  # rewards and the RAIL readout. Scores of several tokens ("10" as "1" "0") are read exactly
  # (method=eval, real_jax.Judge); training needs one-token scores.
  c.data.scores = "1-5"
  # Qwen3 chat template switch: "" = not passed (the template's default; the authors never set
  # it, so their prompts have no <think></think> block) | "false" (empty think block) | "true".
  c.data.enable_thinking = ""
  c.data.max_prompt_len = 2048  # tokens
  # Prompts longer than max_prompt_len: skip (counted, and reported per split) | truncate (keep
  # the last max_prompt_len tokens: the authors' truncation='left', counted) | error.
  c.data.overlong = "skip"
  # Records carved from the training split (seeded, disjoint from training) to select the best
  # checkpoint on; 0 = no validation split (then no best checkpoint is kept).
  c.data.val_size = 256
  c.data.max_target_len = 1024  # tokens of an SFT/TRACT target (feedback + score + EOS)
  # Pack the supervised stages' records (warm-up, RAFT, TRACT) several to a row: segment ids
  # in the attention mask, RoPE positions restarting per record, per-record losses. The same
  # records in fewer rows: the same loss and gradient up to float order (docs/training.md).
  c.data.pack = False
  c.data.pack_length = 0  # packed row width; 0 = the padded batch's own width (its buckets)
  c.data.pack_max_segments = 16  # records per packed row at most
  c.data.train_split = "train"  # split of data.name trained on
  c.data.eval_splits = ""  # comma-separated; "" -> the dataset's default evaluation splits
  c.data.ground_truth = "auto"  # auto | orig_score | gpt4 | human (FLASK)
  c.data.prompt_buckets = ""  # comma-separated prompt lengths ("" -> powers of two)
  c.data.synthetic = ConfigDict()
  c.data.synthetic.seed = 0  # the generator's seed (items, labels, demonstrations)
  c.data.synthetic.difficulty = 1  # 0-4: operand count and range (1: two operands in 0..9)
  c.data.synthetic.label_noise = 0.2  # each grader label moves +-1 with this probability
  c.data.synthetic.n_eval_graders = 3  # test targets average this many noisy labels
  c.data.synthetic.cot_error_rate = 0.1  # demonstrations with one wrong sum
  c.data.synthetic.near_miss_rate = 0.5  # wrong answers that are off by one
  c.data.synthetic.near_miss_credit = 0.0  # > 0: graders credit an off-by-one answer w.p. this
  c.data.synthetic.ood_hard = "level"  # level: OOD hard = difficulty + 1 | carry: 2-digit sums
  c.data.synthetic.answer_max = 0  # other wrong answers uniform over 0..this (0: the max sum)
  c.data.synthetic.reference_has_answers = False  # the reference lists the correct sums
  c.data.synthetic.shuffle_items = False  # list the items in a random order of labels
  # The OOD-rubric split's responses list their answers in a random order of labels.
  c.data.synthetic.ood_rubric_shuffle_response = False
  c.data.synthetic.train_size = 8192  # records in train
  c.data.synthetic.test_size = 512  # records in test (in domain)
  c.data.synthetic.ood_size = 512  # records in each OOD split

  # AdamW (authors' REAL defaults: b1 0.9, b2 0.999, wd 0.01, constant LR, clip 1.0).
  c.optim = ConfigDict()
  c.optim.lr = 1e-6  # peak learning rate (each stage's own lr overrides it when > 0)
  c.optim.b1 = 0.9  # AdamW first-moment decay
  c.optim.b2 = 0.999  # AdamW second-moment decay
  c.optim.eps = 1e-8  # AdamW epsilon
  c.optim.weight_decay = 0.01  # decoupled (AdamW) weight decay
  c.optim.grad_clip = 1.0  # global-norm clip; 0 disables
  c.optim.schedule = "constant"  # constant | cosine | linear (decay to 0 over the stage)
  c.optim.warmup_steps = 0  # linear LR warm-up steps at the start of a stage
  # Stop the run (the last checkpoint kept) after this many consecutive skipped steps (a
  # non-finite loss, gradient or update; an RL update counts when all its steps were); 0: never.
  c.optim.max_skipped_in_a_row = 20

  # Supervised stages: sft, raft and both TRACT stages.
  c.train = ConfigDict()
  c.train.steps = 1000  # optimiser steps
  c.train.batch_size = 32  # rows per optimiser step
  c.train.micro_batch_size = 0  # rows per micro-batch (gradient accumulation); 0 = no split
  c.train.lr = 0.0  # 0 -> optim.lr
  c.train.shuffle = True  # reshuffle the training rows every epoch (seeded)

  # Pretraining a base model on the synthetic task's corpus (method=pretrain;
  # real_jax.data.synthetic_corpus): next-token cross-entropy on packed documents.
  c.pretrain = ConfigDict()
  c.pretrain.steps = 0  # optimiser steps
  c.pretrain.batch_size = 32  # packed rows per step
  c.pretrain.seq_len = 128  # tokens per row
  c.pretrain.lr = 0.0  # 0 -> optim.lr
  c.pretrain.lr_warmup = 50  # linear LR warm-up steps
  c.pretrain.schedule = ""  # "" -> optim.schedule
  c.pretrain.probes = 256  # held-out knowledge probes per kind, checked at the end

  # Optional warm-up SFT stage before the method (raft/tract/grpo/real), on the demonstrations.
  c.warmup = ConfigDict()
  c.warmup.steps = 0  # 0 = no warm-up
  c.warmup.batch_size = 32  # rows per optimiser step
  c.warmup.micro_batch_size = 0  # rows per micro-batch; 0 = no split
  c.warmup.lr = 0.0  # 0 -> optim.lr
  c.warmup.schedule = ""  # "" -> optim.schedule
  c.warmup.lr_warmup = -1  # linear LR warm-up steps of this stage (-1 -> optim.warmup_steps)
  # Every k-th step of the warm-up (and of method=sft's stage) trains on a batch of the
  # synthetic pretraining corpus instead (pretrain.batch_size rows of pretrain.seq_len tokens):
  # replay that keeps the base's skills through SFT. 0 = off; synthetic data only.
  c.warmup.replay_every = 0

  # RAFT / TRACT (CoT-RAFT) specifics.
  c.raft = ConfigDict()
  c.raft.renormalize = False  # y_hat over the score tokens only (False: full vocabulary)
  c.tract = ConfigDict()
  c.tract.lam = 1.0  # weight of the squared error next to the CoT cross-entropy
  c.tract.stage1_steps = 0  # 0 -> train.steps
  c.tract.stage2_steps = 0  # 0 -> train.steps
  c.tract.num_prompts = 0  # training prompts given a self-generated CoT (0 = all)
  c.tract.temperature = 1.0  # self-CoT sampling temperature
  c.tract.top_p = 0.9  # self-CoT nucleus
  c.tract.repetition_penalty = 1.0  # self-CoT sampling (TRACT's own generation used 1.03)

  # RL (grpo and real).
  c.rl = ConfigDict()
  c.rl.steps = 100  # policy updates
  c.rl.prompts_per_step = 256  # prompts sampled per generation round
  c.rl.group_size = 16  # n CoTs per prompt
  c.rl.buffer_size = 256  # prompts per update (groups kept by the filter accumulate up to this)
  c.rl.sample_prompts = 0  # prompts per sampler call (0 = a whole generation round)
  # Every this many updates (0 = never), the first rollout round's first log_sample_groups
  # groups (prompt, CoTs, sampled scores, y_hat, rewards, advantages) go to rollouts.jsonl,
  # TensorBoard text and W&B.
  c.rl.log_samples_every = 10  # updates between rollout samples in rollouts.jsonl (0 = never)
  c.rl.log_sample_groups = 2  # groups of CoTs per logged update
  c.rl.max_rounds = 8  # generation rounds per update before training on a partial buffer
  c.rl.filter = "partial"  # partial | all | not_all_correct | not_all_wrong
  c.rl.epochs = 3  # passes over each update's rows
  c.rl.mini_batch_size = 1024  # rows per optimiser step
  c.rl.micro_batch_size = 0  # rows per micro-batch; 0 = no split
  # > 0: token-budget micro-batches (verl's dynamic batch size) instead of micro_batch_size: a
  # mini-batch's rows sorted by length into micro-batches of at most this many rows x columns,
  # each as narrow as its longest CoT allows (a few bucketed widths); the same update.
  c.rl.token_budget = 0
  c.rl.score_batch_size = 0  # rows per no-grad scoring call (0 -> micro or mini-batch size)
  # True: no teacher-forced scoring pass; the CoTs' log-probs and entropies come from the
  # sampler's decode steps and the score distribution from one decode step after the delimiter
  # (equal up to float order). A PPO ratio over several optimiser steps per update keeps the
  # full pass (its old log-probs are then read off-policy); a KL reference pass always runs.
  c.rl.scores_from_sampler = False
  c.rl.shuffle = False  # shuffle rows between epochs (authors: no)
  c.rl.temperature = 1.0  # rollout sampling temperature
  c.rl.top_p = 0.9  # rollout nucleus (1 = off)
  c.rl.top_k = 0  # rollout top-k (0 = off)
  c.rl.max_response_len = 1024  # tokens per rollout CoT (longer: truncated, no score)
  c.rl.score_temperature = 1.0  # divides the logits at the score position (authors: rollout T)
  c.rl.reward = ""  # "" -> real: regression, grpo: binary
  c.rl.beta = 0.0  # weight of the refinement term (authors' scripts: 0; README: 0.01)
  c.rl.lam = 1.0  # weight of -log pi(y*|x,c) inside the refinement term
  c.rl.shaping = "prob"  # reward shaping by pi(y*|x,c): prob | log_prob | none
  c.rl.shaping_weight = 1.0  # A = A_reg + shaping_weight * A_shaping (authors: 1.0)
  c.rl.renormalize = False  # y_hat over the score tokens only (False: full vocabulary, authors)
  # Group advantages, by recipe (objectives.ADVANTAGE_RECIPES): "" = the method's default
  # (real: authors, grpo: grpo) | authors (leave-one-out, / population std, clip +-1; with
  # method=grpo the authors' binary-RLOO ablation) | grpo (group mean, / (sample std + 1e-6), no
  # clip: DeepSeek / verl) | rloo (leave-one-out only: the exact estimator's) | custom (the three
  # fields below).
  c.rl.advantage = ""
  c.rl.estimator = "rloo"  # custom only: rloo | grpo | none
  c.rl.normalize = True  # custom only: divide advantages by the group's population std
  c.rl.clip = 1.0  # custom only: clip advantages to [-clip, clip]; 0 disables
  # token-mean (authors) | sequence-mean | sequence-sum (exact; see objectives' docstring)
  c.rl.aggregation = "token-mean"
  # "" = the method's default (real: reinforce, the authors; grpo: ppo) | reinforce | ppo (clipped
  # ratio vs the rollout policy: on-policy equal to reinforce, safe for several epochs)
  c.rl.policy_loss = ""
  c.rl.clip_eps = 0.2  # PPO ratio clip (policy_loss=ppo)
  # Upper clip of the PPO ratio, 1 + clip_eps_high (DAPO's clip-higher, e.g. 0.28); 0 = clip_eps.
  c.rl.clip_eps_high = 0.0
  c.rl.invalid = "penalize"  # rows without the delimiter: penalize | drop
  # Reward of an invalid row under "penalize" is -format_penalty; -1 = the worst squared error of
  # a valid row for the score range in use (objectives.worst_squared_error: 25 for scores 1..5
  # with the full-vocabulary y_hat, 16 renormalised), so an invalid row is never preferred.
  c.rl.format_penalty = -1.0
  c.rl.kl_coef = 0.0  # weight of the KL to the initial policy (0 = off, no reference model)
  c.rl.kl_estimator = "k3"  # k1 | k2 | k3
  c.rl.entropy_coef = 0.0  # entropy bonus weight (subtracted from the loss)
  c.rl.lr = 0.0  # 0 -> optim.lr

  # Evaluation.
  c.eval = ConfigDict()
  c.eval.every = 0  # evaluate every K steps of the main stage (0: only at the end)
  c.eval.at_end = True  # evaluate the final model on the eval splits (a row of the table)
  c.eval.after_warmup = True  # also evaluate the warm-up model (a row of the table)
  c.eval.before_training = False  # also evaluate the initial model
  c.eval.splits = ""  # "" -> data.eval_splits
  c.eval.max_items = 0  # per split (0 = all)
  c.eval.periodic_max_items = 0  # per split for the every-K evaluations (0 = max_items)
  c.eval.batch_size = 64  # items per sampler call
  c.eval.readout = ""  # cot | direct ("" -> direct for raft, else cot)
  c.eval.greedy = False  # greedy CoTs instead of sampled ones
  c.eval.temperature = 1.0  # CoT sampling temperature
  c.eval.top_p = 0.9  # CoT nucleus
  c.eval.max_response_len = 1024  # tokens per CoT before it counts as truncated
  c.eval.renormalize = False  # RAIL y_hat over the score tokens only
  c.eval.invalid = "force"  # no delimiter: force (append it, read there) | midpoint
  # CoTs per item (1: the paper's protocol): RAIL ŷ = their mean, the standard readout their vote
  c.eval.num_cots = 1
  # Keep the best checkpoint by this metric of the VALIDATION split (data.val_size records of
  # the training data; never a test split): rail|standard / pearson|spearman|kendall ("" = off).
  # Periodic evaluations (eval.every) score the validation split only.
  c.eval.best_metric = "rail/pearson"

  # Checkpoints, logging.
  c.checkpoint = ConfigDict()
  c.checkpoint.every = 50  # steps (RL: updates)
  c.checkpoint.max_to_keep = 2  # checkpoints kept per stage (plus <stage>_best)
  c.checkpoint.async_save = True  # write checkpoints in the background
  c.log = ConfigDict()
  c.log.every = 10  # steps between metrics.jsonl / TensorBoard / progress lines
  c.log.tensorboard = True  # also write TensorBoard events to <workdir>/tb
  # Seconds without a progress line after which a running step, rollout or evaluation batch logs
  # "still running" with what it is doing (a first compile, a large model's rollout); 0 = off.
  c.log.heartbeat = 60.0
  # Weights & Biases (pip install -e ".[wandb]"): the same scalars, the resolved config, the
  # rollout samples and the results table, in <workdir>/wandb. "" = off.
  c.log.wandb = ConfigDict()
  c.log.wandb.project = ""  # a W&B project name turns the logger on
  c.log.wandb.entity = ""  # team or user ("" = your default)
  c.log.wandb.mode = "offline"  # offline (disk only; wandb sync uploads) | online | disabled

  # Testing hooks.
  c.debug = ConfigDict()
  c.debug.stop_after = 0  # simulate a kill: exit after this many steps of the main stage
  c.debug.kill_at_step = 0  # SIGKILL this process after step N of the main stage (before saving)
  c.debug.kill_in_save = 0  # SIGKILL this process while the checkpoint of step N is being written
  c.debug.nan_update_step = 0  # make the update of this optimiser step (1-based) NaN, every stage
  c.debug.nan_update_count = 1  # ... and of the steps after it: this many in a row
  return c



# What each enumerated field accepts, from the registry or constant that implements it (read
# when asked, so a choice registered after import is accepted at once).
CHOICES: dict[str, Callable[[], tuple]] = {
    "method": lambda: tuple(methods_lib.METHODS),
    "data.output_format": lambda: tuple(f.value for f in OutputFormat),
    "data.synthetic.ood_hard": lambda: ("level", "carry"),
    "data.enable_thinking": lambda: ("", "true", "false"),
    "data.overlong": lambda: tuple(batching.OVERLONG),
    "model.remat": lambda: ("",) + tuple(qwen3.REMATS),
    "log.wandb.mode": lambda: tuple(wandb_log.MODES),
    "model.lora.quantize": lambda: tuple(qwen3.QUANTIZERS),
    "model.attention": lambda: ("auto",) + tuple(attention_lib.ATTENTION_BACKENDS),
    "optim.schedule": lambda: tuple(state_lib.SCHEDULES),
    "warmup.schedule": lambda: ("",) + tuple(state_lib.SCHEDULES),
    "rl.filter": lambda: tuple(registry.GROUP_FILTERS),
    "rl.shaping": lambda: tuple(registry.SHAPINGS),
    "rl.estimator": lambda: tuple(registry.ADVANTAGE_ESTIMATORS),
    "rl.aggregation": lambda: tuple(obj.AGGREGATIONS),
    "rl.invalid": lambda: INVALID_RULES,
    "rl.kl_estimator": lambda: tuple(registry.KL_ESTIMATORS),
    "rl.reward": lambda: ("",) + tuple(registry.REWARDS),
    "rl.advantage": lambda: ("",) + tuple(obj.ADVANTAGE_RECIPES) + ("custom",),
    "rl.policy_loss": lambda: ("",) + tuple(registry.POLICY_LOSSES),
    "eval.readout": lambda: ("",) + tuple(readout.READOUTS),
    "eval.invalid": lambda: tuple(readout.INVALID_READOUTS),
}

RANGES: dict[str, tuple[float | None, bool, float | None, bool]] = {
    "optim.lr": (0.0, False, None, False),
    "warmup.lr": (0.0, True, None, False), "train.lr": (0.0, True, None, False),  # 0: optim.lr
    "rl.lr": (0.0, True, None, False), "pretrain.lr": (0.0, True, None, False),
    "optim.b1": (0.0, True, 1.0, False), "optim.b2": (0.0, True, 1.0, False),
    "optim.eps": (0.0, True, None, False), "optim.weight_decay": (0.0, True, None, False),
    "optim.grad_clip": (0.0, True, None, False),
    "rl.temperature": (0.0, False, None, False), "rl.score_temperature": (0.0, False, None, False),
    "eval.temperature": (0.0, False, None, False), "tract.temperature": (0.0, False, None, False),
    "rl.top_p": (0.0, False, 1.0, True), "eval.top_p": (0.0, False, 1.0, True),
    "tract.top_p": (0.0, False, 1.0, True), "tract.repetition_penalty": (0.0, False, None, False),
    "rl.beta": (0.0, True, None, False), "rl.lam": (0.0, True, None, False),
    "rl.shaping_weight": (0.0, True, None, False), "rl.clip_eps": (0.0, False, None, False),
    "rl.clip_eps_high": (0.0, True, None, False),
    "rl.kl_coef": (0.0, True, None, False), "rl.entropy_coef": (0.0, True, None, False),
    "tract.lam": (0.0, True, None, False), "log.heartbeat": (0.0, True, None, False),
    "checkpoint.every": (1, True, None, False),
    "data.pack_length": (0, True, None, False), "data.pack_max_segments": (1, True, None, False),
    "rl.token_budget": (0, True, None, False), "eval.num_cots": (1, True, None, False),
    "warmup.replay_every": (0, True, None, False),
    "model.lora.rank": (0, True, None, False), "model.lora.alpha": (0.0, False, None, False),
    "data.synthetic.label_noise": (0.0, True, 1.0, True),
    "data.synthetic.cot_error_rate": (0.0, True, 1.0, True),
    "data.synthetic.near_miss_rate": (0.0, True, 1.0, True),
    "data.synthetic.near_miss_credit": (0.0, True, 1.0, True),
}


_FIELD_LINE = re.compile(r"c\.([A-Za-z_][\w.]*)\s*=")


def with_defaults(saved: Mapping[str, Any]) -> ConfigDict:
  """A saved config (a run.json's "config") with today's defaults for the fields it predates, so
  a workdir written before a field existed reads as it ran (the field's default is what it had)."""
  def merge(base: ConfigDict, over: Mapping[str, Any]) -> None:
    for k, v in over.items():
      if k in base and isinstance(base[k], ConfigDict) and isinstance(v, Mapping):
        merge(base[k], v)
      else:
        base[k] = v
  c = base_config()
  merge(c, saved)
  return c


def field_docs() -> dict[str, str]:
  """`{"rl.beta": "weight of the refinement term ...", "rl": "RL (grpo and real).", ...}`: the
  meaning of every field and group, read from the comments of `base_config`'s source (the
  comment block right above a line, then the comment at its end)."""
  docs: dict[str, str] = {}
  block: list[str] = []
  for line in inspect.getsource(base_config).splitlines():
    text = line.strip()
    if text.startswith("#"):
      block.append(text[1:].strip())
      continue
    m = _FIELD_LINE.match(text)
    if m is None:
      block = []  # a blank line or other code ends a comment block
      continue
    trailing = [t.string[1:].strip() for t in tokenize.generate_tokens(io.StringIO(text).readline)
                if t.type == tokenize.COMMENT]
    docs[m.group(1)] = " ".join(block + trailing)
    block = []
  return docs


def describe(config: ConfigDict, *, defaults: ConfigDict | None = None) -> str:
  """The config as `path = value  # meaning` lines, one group after another; values that differ
  from `defaults` (the base config) say the default. What `main --print_config` prints."""
  docs = field_docs()
  defaults = flatten(defaults if defaults is not None else base_config())
  order = {path: i for i, path in enumerate(docs)}  # base_config's own order
  lines: list[str] = []
  group = None
  for path, value in sorted(flatten(config).items(), key=lambda kv: order.get(kv[0], 1 << 30)):
    head = path.rsplit(".", 1)[0] if "." in path else ""
    if head != group:
      group = head
      if head:
        lines.append("")
        lines.append(f"# [{head}] {docs.get(head, '')}".rstrip())
    text = f"{path} = {value!r}"
    notes = []
    if path in defaults and defaults[path] != value:
      notes.append(f"default {defaults[path]!r}")
    if docs.get(path):
      notes.append(docs[path])
    if path in CHOICES:
      notes.append("choices: " + " | ".join(repr(v) for v in CHOICES[path]()))
    lines.append(f"{text:<40}  # {'; '.join(notes)}" if notes else text)
  return "\n".join(lines)


def flatten(c: ConfigDict, prefix: str = "") -> dict[str, Any]:
  """{"group.field": value} of every leaf field."""
  out = {}
  for k, v in c.items():
    path = f"{prefix}{k}"
    if isinstance(v, (ConfigDict, ml_collections.FrozenConfigDict)):
      out.update(flatten(v, path + "."))
    else:
      out[path] = v
  return out


