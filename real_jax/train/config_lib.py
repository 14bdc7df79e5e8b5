"""The config schema of `python -m real_jax.main`, big_vision-style argument parsing, and
validation that runs before anything is compiled.

Every config file (`configs/*.py`) starts from `base_config()`, which lists every field with its
default; `validate(config)` then rejects unknown fields (a typo in a config file), unknown enum
values, and mesh / batch combinations that do not divide, each with a message that says what to
change. `--config.x=...` overrides of unknown fields are rejected by ml_collections itself
(the config is locked).

Batch sizes are counted in *rows* (sequences) unless the name says prompts. The batch of every
jitted step is split over the mesh's batch axes (data x fsdp), so each of these must be a multiple
of that size (and of the micro-batch count): `train.batch_size`, `warmup.batch_size`,
`rl.mini_batch_size`, `rl.prompts_per_step * rl.group_size`, `eval.batch_size`.
"""

from __future__ import annotations

import importlib.util
import inspect
import io
import math
import os
import re
import tokenize
from typing import Any, Iterable

import ml_collections

from real_jax import objectives as obj  # fills the registries
from real_jax import readout, registry
from real_jax.data import batching
from real_jax.judge.formats import OutputFormat
from real_jax.models import qwen3
from real_jax.models.presets import get_preset
from real_jax.train import state as state_lib

ConfigDict = ml_collections.ConfigDict

# The choices of each field come from the registry or constant that implements them; only the
# config's own vocabulary is listed here.
METHODS = ("sft", "raft", "tract", "grpo", "real", "eval", "pretrain")
THINKING = ("", "true", "false")
INVALID_RULES = ("penalize", "drop")  # rows without a score in RL: see train/rl.py
AGGREGATIONS = obj.AGGREGATIONS
ADVANTAGES = ("",) + tuple(obj.ADVANTAGE_RECIPES) + ("custom",)
OVERLONG = batching.OVERLONG
SCHEDULES = tuple(state_lib.SCHEDULES)
REMATS = ("",) + qwen3.REMATS
EVAL_READOUTS = readout.READOUTS
INVALID_READOUTS = readout.INVALID_READOUTS
OUTPUT_FORMATS = tuple(f.value for f in OutputFormat)


class ConfigError(ValueError):
  """A config that cannot run; the message says which field and what to change."""


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
      v = value.strip().lower()
      if v in ("", "1", "true", "yes"):
        out[key] = True
      elif v in ("0", "false", "no"):
        out[key] = False
      else:
        raise ConfigError(f"config argument {key}={value!r} is not a boolean")
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


def model_overrides(config: ConfigDict) -> dict[str, Any]:
  """The `model` block's switches that apply to any model source (HF weights or a preset)."""
  mc = config.model
  out: dict[str, Any] = {"remat": mc.remat} if mc.remat else {}
  out["scan_layers"] = bool(mc.scan_layers)
  return out


def preset_model(config: ConfigDict, tokenizer_size: int | None = None) -> qwen3.Qwen3Config:
  """The config's preset model with the `model` block's overrides. vocab_size -1 sizes the
  vocabulary from the tokenizer (a multiple of 64; the preset's when no tokenizer is given)."""
  mc = config.model
  over = model_overrides(config)
  if mc.vocab_size == -1 and tokenizer_size is not None:
    over["vocab_size"] = -(-tokenizer_size // 64) * 64
  elif mc.vocab_size > 0:
    over["vocab_size"] = int(mc.vocab_size)
  if mc.dtype:
    over["dtype"] = mc.dtype
  if mc.param_dtype:
    over["param_dtype"] = mc.param_dtype
  return get_preset(mc.preset).model.replace(**over)


def _get_field(config: ConfigDict, path: str) -> Any:
  """`config.<path>`, or None when the config has no such field."""
  node = config
  for part in path.split("."):
    if part not in node:
      return None
    node = node[part]
  return node


def set_field(config: ConfigDict, path: str, value: str) -> None:
  """`config.<path> = value`, the string parsed as the field's type (tools' `--set a.b=v`)."""
  *parents, leaf = path.split(".")
  node = config
  for part in parents:
    if part not in node:
      raise ConfigError(f"unknown config field {path!r} (no {part!r})")
    node = node[part]
  if leaf not in node:
    raise ConfigError(f"unknown config field {path!r}")
  old = node[leaf]
  try:
    if isinstance(old, bool):
      if value.lower() not in ("true", "false", "1", "0"):
        raise ValueError(value)
      new = value.lower() in ("true", "1")
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
  c.method = "real"  # sft | raft | tract | grpo | real | eval | pretrain (synthetic base)
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
  c.data.synthetic.reference_has_answers = False  # the reference lists the correct sums
  c.data.synthetic.shuffle_items = False  # list items and answers in a random order of labels
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
  c.rl.max_rounds = 8  # generation rounds per update before training on a partial buffer
  c.rl.filter = "partial"  # partial | all | not_all_correct | not_all_wrong
  c.rl.epochs = 3  # passes over each update's rows
  c.rl.mini_batch_size = 1024  # rows per optimiser step
  c.rl.micro_batch_size = 0  # rows per micro-batch; 0 = no split
  c.rl.score_batch_size = 0  # rows per no-grad scoring call (0 -> micro or mini-batch size)
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

  # Testing hooks.
  c.debug = ConfigDict()
  c.debug.stop_after = 0  # simulate a kill: exit after this many steps of the main stage
  c.debug.kill_at_step = 0  # SIGKILL this process after step N of the main stage (before saving)
  c.debug.kill_in_save = 0  # SIGKILL this process while the checkpoint of step N is being written
  c.debug.nan_update_step = 0  # make the update of this optimiser step (1-based) NaN, every stage
  return c


_FIELD_LINE = re.compile(r"c\.([A-Za-z_][\w.]*)\s*=")


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


def check_fields(config: ConfigDict, schema: ConfigDict | None = None) -> None:
  """Raises ConfigError for fields the schema does not know (e.g. a typo in a config file)."""
  schema = schema or base_config()
  known = flatten(schema)
  known_groups = {k.rsplit(".", 1)[0] for k in known if "." in k}
  for path in flatten(config):
    if path in known:
      continue
    group = path.rsplit(".", 1)[0] if "." in path else ""
    siblings = sorted(k.rsplit(".", 1)[-1] for k in known
                      if (k.rsplit(".", 1)[0] if "." in k else "") == group)
    where = f"config.{group}" if group and group in known_groups else "config"
    raise ConfigError(f"unknown config field config.{path}; the fields of {where} are: "
                      f"{', '.join(siblings) if group in known_groups or not group else ''}. "
                      f"Fix the name in the config file or the --config.{path} override.")


def _choice(config: ConfigDict, path: str, choices: Iterable[str]) -> None:
  v = config
  for part in path.split("."):
    v = v[part]
  if v not in choices:
    raise ConfigError(f"config.{path}={v!r} is not one of {list(choices)}")


def batch_axes_size(config: ConfigDict, num_devices: int) -> tuple[dict[str, int], int]:
  """(resolved mesh shape, data x fsdp size) without building the mesh; ConfigError if it
  needs more than `num_devices` devices (a smaller mesh uses the first devices)."""
  shape = {"data": int(config.mesh.data), "fsdp": int(config.mesh.fsdp),
           "tensor": int(config.mesh.tensor)}
  if list(shape.values()).count(-1) > 1:
    raise ConfigError(f"config.mesh {shape}: at most one axis may be -1")
  for k, v in shape.items():
    if v == 0 or v < -1:
      raise ConfigError(f"config.mesh.{k}={v}: use a positive size or -1 (all remaining devices)")
  fixed = math.prod(v for v in shape.values() if v != -1)
  if -1 in shape.values():
    if num_devices % fixed:
      raise ConfigError(f"config.mesh {shape} cannot be filled from {num_devices} devices "
                        f"({num_devices} is not a multiple of {fixed}); change config.mesh.*")
    shape[[k for k, v in shape.items() if v == -1][0]] = num_devices // fixed
  elif fixed > num_devices:
    raise ConfigError(f"config.mesh {shape} needs {fixed} devices but {num_devices} are "
                      f"available; change config.mesh.* (e.g. --config.mesh.data=-1)")
  # A mesh smaller than the machine runs on the first prod(mesh) devices (e.g. the 1-device CPU
  # demo under 8 fake test devices); main logs a warning.
  return shape, shape["data"] * shape["fsdp"]


def _divides(name: str, value: int, by: int, why: str) -> None:
  if value <= 0:
    raise ConfigError(f"config.{name}={value} must be positive")
  if value % by:
    lo = max(by, value - value % by)
    raise ConfigError(f"config.{name}={value} is not a multiple of {by} ({why}); "
                      f"use e.g. {lo} or {lo + by}")


def stages_for(config: ConfigDict) -> list[str]:
  """The ordered training stages of a run (a stage is resumable on its own)."""
  m = config.method
  if m == "pretrain":
    return ["pretrain"]
  pre = ["warmup"] if config.warmup.steps > 0 and m != "eval" else []
  if m == "sft":
    return ["sft"] if not pre else ["warmup", "sft"]
  if m == "raft":
    return pre + ["raft"]
  if m == "tract":
    return pre + ["tract1", "tract_gen", "tract2"]
  if m in ("grpo", "real"):
    return pre + ["rl"]
  return []


# Numeric fields with a range: (low, low included, high, high included); None = unbounded. Every
# float field must also be finite (NaN compares false with any bound).
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
    "rl.kl_coef": (0.0, True, None, False), "rl.entropy_coef": (0.0, True, None, False),
    "tract.lam": (0.0, True, None, False), "log.heartbeat": (0.0, True, None, False),
    "checkpoint.every": (1, True, None, False),
    "data.synthetic.label_noise": (0.0, True, 1.0, True),
    "data.synthetic.cot_error_rate": (0.0, True, 1.0, True),
    "data.synthetic.near_miss_rate": (0.0, True, 1.0, True),
    "data.synthetic.near_miss_credit": (0.0, True, 1.0, True),
}


def check_ranges(config: ConfigDict) -> None:
  """Raises ConfigError for a non-finite float field or a value outside `RANGES`."""
  for name, v in flatten(config).items():
    if isinstance(v, float) and not math.isfinite(v):
      raise ConfigError(f"config.{name}={v} is not a finite number")
  for name, (lo, lo_in, hi, hi_in) in RANGES.items():
    v = _get_field(config, name)
    low_ok = lo is None or (v >= lo if lo_in else v > lo)
    high_ok = hi is None or (v <= hi if hi_in else v < hi)
    if not (low_ok and high_ok):
      span = (f"{'[' if lo_in else '('}{lo if lo is not None else '-inf'}, "
              f"{hi if hi is not None else 'inf'}{']' if hi_in else ')'}")
      raise ConfigError(f"config.{name}={v} must be in {span}")


def validate(config: ConfigDict, num_devices: int) -> dict[str, int]:
  """Checks a config before anything is built or compiled; returns the resolved mesh shape.

  Raises ConfigError with a message that names the field and what to change.
  """
  check_fields(config)
  _choice(config, "method", METHODS)
  _choice(config, "data.output_format", OUTPUT_FORMATS)
  _choice(config, "rl.filter", tuple(registry.GROUP_FILTERS))
  _choice(config, "rl.shaping", tuple(registry.SHAPINGS))
  _choice(config, "rl.estimator", tuple(registry.ADVANTAGE_ESTIMATORS))
  _choice(config, "rl.aggregation", AGGREGATIONS)
  _choice(config, "rl.invalid", INVALID_RULES)
  _choice(config, "rl.kl_estimator", tuple(registry.KL_ESTIMATORS))
  _choice(config, "rl.reward", ("",) + tuple(registry.REWARDS))
  _choice(config, "rl.advantage", ADVANTAGES)
  _choice(config, "rl.policy_loss", ("",) + tuple(registry.POLICY_LOSSES))
  _choice(config, "data.overlong", OVERLONG)
  _choice(config, "data.enable_thinking", THINKING)
  if config.rl.advantage != "custom":
    base = base_config().rl
    changed = [k for k in ("estimator", "normalize", "clip") if config.rl[k] != base[k]]
    if changed:
      raise ConfigError(f"config.rl.{changed[0]} is only read with config.rl.advantage=custom "
                        f"(now {config.rl.advantage!r}); set --config.rl.advantage=custom or "
                        f"pick a recipe: {list(obj.ADVANTAGE_RECIPES)}")
  if config.data.val_size < 0:
    raise ConfigError(f"config.data.val_size={config.data.val_size} must be >= 0")
  if config.eval.best_metric:
    parts = config.eval.best_metric.split("/")
    if (len(parts) != 2 or parts[0] not in ("rail", "standard")
        or parts[1] not in ("pearson", "spearman", "kendall", "mse")):
      raise ConfigError(f"config.eval.best_metric={config.eval.best_metric!r}: use READOUT/METRIC "
                        "of the validation split, e.g. rail/pearson (or \"\" to keep no best)")
  if config.rl.format_penalty != -1.0 and config.rl.format_penalty < 0:
    raise ConfigError(f"config.rl.format_penalty={config.rl.format_penalty}: use a value >= 0 "
                      "(the invalid row's reward is its negative) or -1 (derived)")
  _choice(config, "optim.schedule", SCHEDULES)
  _choice(config, "warmup.schedule", ("",) + SCHEDULES)
  _choice(config, "model.remat", REMATS)
  _choice(config, "eval.readout", ("",) + EVAL_READOUTS)
  _choice(config, "eval.invalid", INVALID_READOUTS)
  if not config.model.preset and not config.model.hf_dir:
    raise ConfigError("set config.model.preset (random init) or config.model.hf_dir (weights)")
  if config.method == "eval" and not (config.init.checkpoint or config.model.hf_dir):
    raise ConfigError("method=eval needs config.init.checkpoint (a workdir or checkpoint dir) "
                      "or config.model.hf_dir (a Hugging Face directory)")
  check_ranges(config)
  # Counts: a negative one would run "successfully" doing nothing (a stage of -3 steps).
  for name in ("optim.max_skipped_in_a_row", "debug.nan_update_step", "rl.steps",
               "warmup.steps", "train.steps", "pretrain.steps", "tract.stage1_steps",
               "log.heartbeat", "rl.epochs", "eval.every", "checkpoint.every", "eval.max_items",
               "rl.max_response_len", "eval.max_response_len", "data.max_prompt_len",
               "rl.buffer_size", "rl.prompts_per_step", "rl.sample_prompts",
               "rl.mini_batch_size", "rl.micro_batch_size", "rl.score_batch_size",
               "train.batch_size", "train.micro_batch_size", "warmup.batch_size",
               "warmup.micro_batch_size", "eval.batch_size"):
    v = _get_field(config, name)
    if v is not None and v < 0:
      raise ConfigError(f"config.{name}={v} is negative; use 0 or more")
  if config.rl.group_size < 2 and config.method in ("grpo", "real"):
    raise ConfigError(f"config.rl.group_size={config.rl.group_size}: group advantages need at "
                      "least 2 samples per prompt")

  mesh_shape, nb = batch_axes_size(config, num_devices)
  why = f"the batch is split over the mesh's data x fsdp = {nb} devices"
  stages = stages_for(config)

  def check_batch(prefix: str, batch: int, micro: int):
    _divides(f"{prefix}.batch_size" if prefix != "rl" else "rl.mini_batch_size", batch, nb, why)
    if micro:
      if batch % micro:
        raise ConfigError(f"config.{prefix}.micro_batch_size={micro} does not divide the batch "
                          f"of {batch} rows; pick a divisor of {batch}")
      _divides(f"{prefix}.micro_batch_size", micro, nb, why)

  if config.method == "pretrain":
    if config.data.name not in ("synthetic", "synthetic_judge"):
      raise ConfigError(f"method=pretrain builds the synthetic task's base model; it needs "
                        f"data.name=synthetic (got {config.data.name!r})")
    if config.pretrain.steps <= 0 or config.pretrain.seq_len < 2:
      raise ConfigError("method=pretrain needs config.pretrain.steps > 0 and "
                        "config.pretrain.seq_len >= 2")
    check_batch("pretrain", config.pretrain.batch_size, 0)
  if "warmup" in stages:
    check_batch("warmup", config.warmup.batch_size, config.warmup.micro_batch_size)
  if any(s in stages for s in ("sft", "raft", "tract1", "tract2")):
    check_batch("train", config.train.batch_size, config.train.micro_batch_size)
  if "rl" in stages:
    rows = config.rl.buffer_size * config.rl.group_size
    check_batch("rl", config.rl.mini_batch_size, config.rl.micro_batch_size)
    if config.rl.mini_batch_size > rows:
      raise ConfigError(f"config.rl.mini_batch_size={config.rl.mini_batch_size} exceeds the "
                        f"{rows} rows of an update (rl.buffer_size x rl.group_size)")
    if rows % config.rl.mini_batch_size:
      raise ConfigError(f"config.rl.mini_batch_size={config.rl.mini_batch_size} does not divide "
                        f"the {rows} rows of an update (rl.buffer_size={config.rl.buffer_size} x "
                        f"rl.group_size={config.rl.group_size}); pick a divisor of {rows}")
    if config.rl.score_batch_size:
      _divides("rl.score_batch_size", config.rl.score_batch_size, nb, why)
    _divides("rl.prompts_per_step x rl.group_size",
             config.rl.prompts_per_step * config.rl.group_size, nb, why)
  if (stages and config.method != "pretrain") or config.method == "eval" or config.eval.at_end:
    _divides("eval.batch_size", config.eval.batch_size, nb, why)
  return mesh_shape


def rl_settings(config: ConfigDict, method: str, score_values) -> dict[str, Any]:
  """The RL settings a run actually uses, with the method's defaults resolved.

  Returns {"reward", "advantage" (recipe name), "estimator", "normalize", "clip", "ddof", "eps",
  "policy_loss", "format_penalty", "label"}: `label` describes them for result tables.
  """
  rl = config.rl
  reward = rl.reward or ("binary" if method == "grpo" else "regression")
  recipe = rl.advantage or ("grpo" if method == "grpo" else "authors")
  if recipe == "custom":
    adv = dict(estimator=rl.estimator, normalize=bool(rl.normalize), clip=rl.clip or None,
               ddof=0, eps=1e-8)
  else:
    adv = dict(obj.ADVANTAGE_RECIPES[recipe])
  policy_loss = rl.policy_loss or ("ppo" if method == "grpo" else "reinforce")
  penalty = (obj.worst_squared_error(score_values, renormalize=bool(rl.renormalize))
             if rl.format_penalty == -1.0 else float(rl.format_penalty))
  pl = f"ppo (clip ε={rl.clip_eps:g})" if policy_loss == "ppo" else "reinforce"
  label = (f"{reward} reward; advantages: {recipe} ({obj.describe_advantages(**adv)}); "
           f"policy loss: {pl}, {rl.aggregation}")
  if method == "real":
    label += f"; β={rl.beta:g}, λ={rl.lam:g}, shaping {rl.shaping}"
  if rl.kl_coef:
    label += f"; KL {rl.kl_estimator} × {rl.kl_coef:g}"
  return dict(reward=reward, advantage=recipe, policy_loss=policy_loss, format_penalty=penalty,
              label=label, **adv)


EXACT_OVERRIDES = ("rl.aggregation=sequence-sum", "rl.advantage=rloo", "rl.beta=1",
                   "rl.shaping=log_prob", "rl.shaping_weight=<rl.lam>", "rl.filter=all",
                   "rl.epochs=1", "rl.mini_batch_size=<rl.buffer_size x rl.group_size>",
                   "rl.top_p=1", "rl.top_k=0", "rl.temperature=1", "rl.score_temperature=1",
                   "rl.invalid=penalize", "rl.kl_coef=0", "rl.entropy_coef=0")


def exactness_gaps(config: ConfigDict) -> list[str]:
  """The conditions under which REAL's expected gradient is exactly -grad J (objectives' module
  docstring) that `config` does not meet; [] = the run uses the exact estimator.

  J = E_c[-(y_hat - y*)^2 + lam * log pi(y* | x, c)], invalid rows scoring the constant
  -format_penalty (+ lam * log 1e-8).
  """
  rl = config.rl
  gaps = []
  if rl.aggregation != "sequence-sum":
    gaps.append(f"rl.aggregation={rl.aggregation} (needs sequence-sum)")
  s = rl_settings(config, "real", (1.0, 2.0, 3.0, 4.0, 5.0))
  if s["estimator"] != "rloo" or s["normalize"] or s["clip"]:
    gaps.append(f"advantages {s['advantage']} (needs leave-one-out without normalisation or "
                "clipping: rl.advantage=rloo)")
  if rl.beta != 1.0:
    gaps.append(f"rl.beta={rl.beta:g} (needs 1)")
  consistent = ((rl.shaping == "log_prob" and rl.shaping_weight == rl.lam)
                or (rl.lam == 0 and (rl.shaping == "none" or rl.shaping_weight == 0)))
  if not consistent:
    gaps.append(f"shaping {rl.shaping} x {rl.shaping_weight:g} with lam={rl.lam:g} (needs "
                "rl.shaping=log_prob and rl.shaping_weight=rl.lam, or lam=0 and no shaping)")
  if rl.filter != "all":
    gaps.append(f"rl.filter={rl.filter} (needs all: a filter on the sampled scores selects groups)")
  steps_per_batch = rl.epochs * (rl.buffer_size * rl.group_size // max(rl.mini_batch_size, 1))
  if steps_per_batch > 1:
    # After the first step the samples are off-policy: clipped per-token PPO ratios are not the
    # sequence-level importance weight, the refinement term is averaged over the old policy's
    # samples with no weight, and the leave-one-out baselines are stale.
    gaps.append(f"{steps_per_batch} optimiser steps per rollout batch (needs one on-policy step: "
                "rl.epochs=1 and one mini-batch, whatever rl.policy_loss)")
  if rl.top_p < 1.0 or rl.top_k or rl.temperature != 1.0:
    gaps.append(f"rollouts at T={rl.temperature:g}, top-p {rl.top_p:g}, top-k {rl.top_k} "
                "(needs T=1, top-p 1, top-k 0: samples from the policy itself)")
  if rl.score_temperature != 1.0:
    gaps.append(f"rl.score_temperature={rl.score_temperature:g} (needs 1)")
  if rl.invalid != "penalize":
    gaps.append("rl.invalid=drop (needs penalize: a constant reward for rows without a score)")
  if rl.kl_coef or rl.entropy_coef:
    gaps.append("a KL or entropy term (not part of J)")
  return gaps
