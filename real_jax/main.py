r"""Train and evaluate LLM judges: REAL and its baselines, from one config.

  python -m real_jax.main --config configs/synthetic.py --workdir workdirs/synthetic
  python -m real_jax.main --config configs/prometheus.py:size=8b,method=real \
      --workdir /ckpt/real8b --config.data.manual_dir=/data/prometheus --config.rl.beta=0.01

`config.method` selects the job (config.warmup.steps > 0 puts a warm-up SFT stage first); the
methods are listed under `method` in `--help` and described in train/methods.py.

`--print_config` prints a config's resolved values with what each field means and what the
config file or an override changed; `--help` lists every field with its default. Everything is
checked before compilation (unknown fields, bad values, a mesh or batch size that does not
divide). Re-running the same command after a kill resumes from the last checkpoint of
the current stage and continues exactly as an uninterrupted run. Results: <workdir>/results.md
(Table-2 layout), results.json, eval/*.json, metrics.jsonl, tb/.
"""

from __future__ import annotations

import dataclasses
import json
import logging as pylogging
import os
import sys
import time
from typing import Any

import jax
import tensorflow_datasets as tfds
from absl import app, flags, logging
from flax import nnx
from ml_collections import config_flags

from real_jax import models
from real_jax import sharding as shd
from real_jax.data import batching
from real_jax.evaluate import Evaluator
from real_jax.judge import scores as scores_lib
from real_jax.models import hf
from real_jax.train import checkpoint as ckpt_lib
from real_jax.train import config_lib, data_utils, tract
from real_jax.train import methods as methods_lib
from real_jax.train import settings as settings_lib
from real_jax.train import stages as stages_lib
from real_jax.train import workdir as workdir_lib
from real_jax.train.metrics import MetricsWriter, set_heartbeat
from real_jax.train.wandb_log import WandbLogger
from real_jax.train.runner import JudgeVocab, Run, Sources, StageRunner, TooManySkippedSteps

__all__ = ["setup", "claim_workdir", "run", "main", "RESULT_COLUMNS", "results_table"]

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               "configs", "synthetic.py")

def _resolve_model(config, mesh, tokenizer):
  """(model cfg, graphdef, params): HF weights or a preset's random init; then optionally the
  parameters of config.init.checkpoint. Shape/mesh problems raise ConfigError before compiling."""
  mc = config.model
  overrides = config_lib.model_overrides(config)
  lora = settings_lib.lora_fields(config)
  if mc.hf_dir:
    cfg = hf.config_from_hf(hf.read_config(mc.hf_dir), dtype=mc.dtype or None,
                            param_dtype=mc.param_dtype or None, **overrides)
  else:
    cfg = config_lib.preset_model(config, len(tokenizer))
  if len(tokenizer) > cfg.vocab_size:
    raise config_lib.ConfigError(
        f"the tokenizer has {len(tokenizer)} tokens but the model's vocab_size is "
        f"{cfg.vocab_size}; set config.model.vocab_size=-1 (from the tokenizer) or a larger value")
  graphdef, abstract = models.abstract_model(cfg)
  try:
    models.param_shardings(abstract, mesh)
  except ValueError as e:
    raise config_lib.ConfigError(
        f"the model does not divide over mesh {dict(mesh.shape)}: {e}. Change config.mesh.* (e.g. "
        "a smaller tensor axis)") from None
  # The base model first (LoRA adapters are added on top of whatever the weights come from).
  base_cfg = cfg.replace(lora_rank=0, quantize="")
  if mc.hf_dir:
    base_over = {k: v for k, v in overrides.items() if k not in lora}
    base_cfg, graphdef, params = hf.load_hf(mc.hf_dir, mesh=mesh, dtype=mc.dtype or None,
                                            param_dtype=mc.param_dtype or None, **base_over)
    cfg = base_cfg.replace(**lora)
  else:
    graphdef, params = models.init_params(base_cfg, mesh=mesh, seed=config.seed)
  if lora:
    graphdef, params = models.add_lora(cfg.replace(quantize=""), params, seed=config.seed,
                                       mesh=mesh)
  ic = config.init
  restore = lambda target: ckpt_lib.restore_run_params(ic.checkpoint, target, stage=ic.stage,
                                                       best=ic.best)
  written_by = _checkpoint_model(ic.checkpoint, ic.stage, ic.best) if ic.checkpoint else {}
  _check_adapters(written_by, cfg, ic.checkpoint)
  continues = bool(cfg.lora_rank and written_by.get("lora_rank"))  # its adapters continue
  quantized_first = bool(cfg.quantize and continues and written_by.get("quantize"))
  if quantized_first:  # a QLoRA run's checkpoint: the same int8 layout
    graphdef, params = models.quantize_params(cfg, params, mesh=mesh)
  if ic.checkpoint and (continues or not cfg.lora_rank):
    d, step, params = restore(params)
  elif ic.checkpoint:  # a checkpoint without adapters: its weights become the frozen base
    adapters, base = nnx.split_state(params, nnx.LoRAParam, ...)
    d, step, base = restore(base)
    params = nnx.merge_state(base, adapters)
  if ic.checkpoint:
    logging.info("initial parameters from %s step %d%s", d, step,
                 "" if continues or not cfg.lora_rank else " (the frozen base of the adapters)")
  if cfg.quantize and not quantized_first:  # QLoRA: the frozen targets stored int8
    graphdef, params = models.quantize_params(cfg, params, mesh=mesh)
  return cfg, graphdef, params


def _check_adapters(written_by: dict[str, Any], cfg, path: str) -> None:
  """A checkpoint with LoRA adapters continues only under the same adapters (rank, alpha,
  targets; its int8 base only as QLoRA): otherwise a one-line config error says what to do."""
  rank = int(written_by.get("lora_rank", 0) or 0)
  if not rank:
    return
  mine = (cfg.lora_rank, float(cfg.lora_alpha), tuple(cfg.lora_targets))
  theirs = (rank, float(written_by.get("lora_alpha", 16.0)),
            tuple(written_by.get("lora_targets", ())))
  if mine != theirs or (written_by.get("quantize") and not cfg.quantize):
    raise config_lib.ConfigError(
        f"config.init.checkpoint={path} holds LoRA adapters (rank {rank}, alpha {theirs[1]:g}, "
        f"targets {','.join(theirs[2])}, base {written_by.get('quantize') or 'not quantized'}); "
        "continue it with the same config.model.lora.*, or merge it into a Hugging Face "
        "directory (python -m real_jax.tools.export_hf) and start from config.model.hf_dir")


def _checkpoint_model(path: str, stage: str, best: bool) -> dict[str, Any]:
  """The model fields (`Qwen3Config`) of the run that wrote a checkpoint, from its run.json
  ({} without one: a checkpoint without adapters)."""
  d, _ = ckpt_lib.find_params_checkpoint(path, stage, best)
  run_json = os.path.join(os.path.dirname(os.path.dirname(d)), "run.json")
  if not os.path.exists(run_json):
    return {}
  with open(run_json) as f:
    return json.load(f).get("model", {})


def _check_multi_token_scores(config, settings, score_tokens) -> None:
  """What reads scores of several tokens (`models.score_candidates`) and what does not."""
  what = (f"config.data.scores={config.data.scores!r}: {score_tokens.scale.labels[-1]!r} is "
          f"{len(score_tokens.sequences[-1])} tokens for this tokenizer")
  losses = {methods_lib.STAGES[n].loss for n in settings.stages}
  rl = settings.rl
  if rl is not None and rl.defaults.score_in_action:
    raise config_lib.ConfigError(
        f"{what}: standard RL ({config.method}) puts the sampled score token in the action; a "
        "score of several tokens is no token. Use method=real, or a scale of one-token scores "
        "(e.g. 0-9)")
  if rl is not None and config.rl.scores_from_sampler:
    raise config_lib.ConfigError(
        f"{what}: rl.scores_from_sampler reads one score token at the decode step; set "
        "config.rl.scores_from_sampler=False (the scoring pass reads every score's tokens)")
  if rl is not None and config.rl.score_temperature != 1.0:
    raise config_lib.ConfigError(
        f"{what}: such scores are read at temperature 1; set config.rl.score_temperature=1.0")
  if config.data.pack and losses & {"raft", "tract"}:
    raise config_lib.ConfigError(
        f"{what}: RAFT and TRACT read them from unpacked rows; set config.data.pack=False")


def _check_response_room(config, settings: settings_lib.RunSettings, vocab: JudgeVocab) -> None:
  """A response limit that cannot hold the delimiter and a score token makes every row invalid
  (loss 0, nothing reported): a config error before anything compiles."""
  need = len(vocab.delim_start) + 1
  limits = []
  if settings.rl is not None:
    limits.append(("rl.max_response_len", config.rl.max_response_len))
  if settings.evaluations.any:
    limits.append(("eval.max_response_len", config.eval.max_response_len))
  for name, v in limits:
    if v < need:
      raise config_lib.ConfigError(
          f"config.{name}={v} cannot hold the delimiter ({need - 1} tokens) and a score token; "
          f"use at least {need} (a CoT needs more)")


def _first_process_first(fn):
  """Runs `fn` on process 0 first (it may build the tokenizer or prepare the data in the shared
  workdir), then on the other processes, which only read what it wrote."""
  if not shd.is_main_process():
    shd.sync("real_jax:prepared")
  out = fn()
  if shd.is_main_process():
    shd.sync("real_jax:prepared")
  return out


def setup(config, workdir: str, identity: dict[str, Any] | None = None
          ) -> tuple[Run, Evaluator, Any]:
  """Validates the config, builds mesh, tokenizer, data, model, metrics writer, evaluator and
  stage runner; records `identity` (`claim_workdir`) in run.json. Returns (the run, its
  evaluator, the initial parameters)."""
  mesh_shape = config_lib.validate(config, jax.device_count())
  set_heartbeat(config.log.heartbeat)
  os.makedirs(workdir, exist_ok=True)
  n_mesh = mesh_shape["data"] * mesh_shape["fsdp"] * mesh_shape["tensor"]
  if n_mesh < jax.device_count():
    logging.warning("config.mesh %s uses %d of the %d devices", mesh_shape, n_mesh,
                    jax.device_count())
  mesh = shd.make_mesh(mesh_shape, devices=jax.devices()[:n_mesh])
  main_process = shd.is_main_process()
  tokenizer, tok_dir = _first_process_first(lambda: data_utils.load_tokenizer(config, workdir))
  score_tokens = scores_lib.resolve_score_tokens(tokenizer, config.data.output_format,
                                                 scale=config.data.scores)
  pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else score_tokens.eos_id
  vocab = JudgeVocab(tokenizer, tok_dir, score_tokens, int(pad_id),
                     data_utils.delimiter_at_start(tokenizer, score_tokens))
  settings = settings_lib.resolve(config, score_tokens.values)
  if score_tokens.multi_token:
    _check_multi_token_scores(config, settings, score_tokens)
  _check_response_room(config, settings, vocab)
  model_cfg, graphdef, params = _resolve_model(config, mesh, tokenizer)
  stages = list(settings.stages)
  train_src, eval_srcs, val_src = _first_process_first(lambda: data_utils.load_sources(
      config, workdir, train=bool(stages) and settings.method.judge_data,
      evaluation=settings.evaluations.any))
  data_utils.check_eval_sources(config, eval_srcs, tokenizer, score_tokens)
  if settings.method.judge_data:
    data_utils.check_context_length(config, model_cfg.max_position_embeddings, stages)
  wandb = None
  if config.log.wandb.project and main_process:
    try:
      wandb = WandbLogger(workdir, project=config.log.wandb.project,
                          entity=config.log.wandb.entity, mode=config.log.wandb.mode,
                          name=config.name, config={"config": config.to_dict(),
                                                    "model": dataclasses.asdict(model_cfg)})
    except ImportError as e:
      raise config_lib.ConfigError(str(e)) from None
  writer = MetricsWriter(workdir, tensorboard=config.log.tensorboard, enabled=main_process,
                         wandb=wandb)
  evaluator = Evaluator(config, workdir, graphdef=graphdef, mesh=mesh, tokenizer=tokenizer,
                        score_tokens=score_tokens, delim_start=vocab.delim_start,
                        eval_sources=eval_srcs,
                        val_source=val_src)
  runner = StageRunner(config, workdir, mesh, writer, evaluate=evaluator.periodic,
                       has_validation=val_src is not None)
  run = Run(config=config, workdir=workdir, mesh=mesh, graphdef=graphdef, model_cfg=model_cfg,
            vocab=vocab, settings=settings,
            sources=Sources(train=train_src, val=val_src, evals=eval_srcs),
            writer=writer, runner=runner)
  if main_process:
    with open(os.path.join(workdir, "run.json"), "w") as f:
      json.dump({"identity": identity, "config": config.to_dict(), "stages": stages,
                 "mesh": dict(mesh.shape),
                 "model": dataclasses.asdict(model_cfg), "tokenizer": tok_dir,
                 "score_tokens": dataclasses.asdict(score_tokens), "devices": jax.device_count(),
                 "processes": jax.process_count(), "backend": jax.default_backend()},
                f, indent=2)
  logging.info("run: method=%s stages=%s mesh=%s model=%s (%.2fM params) workdir=%s",
               config.method, stages, dict(mesh.shape), config.model.hf_dir or config.model.preset,
               model_cfg.num_params() / 1e6, workdir)
  return run, evaluator, params


def claim_workdir(config, workdir: str, *, force_unlock: bool = False
                  ) -> tuple[workdir_lib.WorkdirLock | None, dict[str, Any]]:
  """Before anything is written: the workdir's lock (process 0) and the run's identity checked
  against the one the workdir records. Returns (the lock or None, the identity); raises
  WorkdirBusy or ConfigError (identity mismatch, an unwritable workdir), changing no file."""
  config_lib.validate(config, jax.device_count())
  identity = workdir_lib.run_identity(
      config, config_lib.stages_for(config), model_dir=config.model.hf_dir,
      tokenizer_dir=config.data.tokenizer or config.model.hf_dir,
      init_checkpoint=config.init.checkpoint)
  lock, refused = None, None
  if shd.is_main_process():
    try:
      lock = workdir_lib.WorkdirLock.acquire(workdir, force=force_unlock)
      workdir_lib.check_identity(workdir, identity)
    except workdir_lib.WorkdirBusy as e:
      refused = e
    except workdir_lib.IdentityMismatch as e:
      refused = config_lib.ConfigError(str(e))
    except OSError as e:  # permission denied, a file in the way, a read-only file system
      refused = config_lib.ConfigError(f"cannot write to workdir {workdir} ({e.strerror}); "
                                       "choose a writable --workdir")
    except Exception as e:  # noqa: BLE001 - refused on every process, not only process 0
      refused = config_lib.ConfigError(f"cannot claim workdir {workdir}: {type(e).__name__}: {e}")
    except BaseException:
      if lock is not None:
        lock.release()
      raise
    if refused is not None and lock is not None:
      lock.release()
      lock = None
  if shd.agree(refused is not None):  # every process stops, not only process 0
    raise refused or config_lib.ConfigError("process 0 refused the workdir (see its log)")
  return lock, identity


def run(config, workdir: str, *, force_unlock: bool = False) -> dict[str, Any] | None:
  """Runs the config's stages then the final evaluation; returns the final eval summary."""
  lock, identity = claim_workdir(config, workdir, force_unlock=force_unlock)
  try:
    return _run(config, workdir, identity)
  finally:
    if lock is not None:
      lock.release()


def _run(config, workdir: str, identity: dict[str, Any]) -> dict[str, Any] | None:
  try:
    r, evaluate, params = setup(config, workdir, identity)
  except (ValueError, FileNotFoundError) as e:  # bad files, tokenizer or checkpoint: one line
    if isinstance(e, config_lib.ConfigError):
      raise
    raise config_lib.ConfigError(" ".join(str(e).split())) from e
  c = config
  s = r.settings
  t_start = time.time()
  try:
    name = c.name or s.method.label
    if s.evaluations.before_training and not stages_lib.has_row(workdir, "initial model"):
      evaluate(params, name="initial model", tag="initial",
               checkpoint=stages_lib.initial_label(c), training="none")
    carry = stages_lib.Carry(params=params, base=params, base_label=stages_lib.initial_label(c))
    del params
    for stage in s.stages:
      t0 = time.time()
      stages_lib.STAGE_FNS.lookup(stage)(r, evaluate, carry, stage == s.stages[-1])
      logging.info("stage %s finished in %.0fs", stage, time.time() - t0)
    summary = None
    if not s.stages:  # evaluation only (method=eval)
      if s.evaluations.final:
        summary = evaluate(carry.params, name=name, tag=s.method.final_tag,
                           checkpoint=stages_lib.initial_label(c))
      _print_results(workdir, time.time() - t_start, r.writer)
      return summary
    final_stage = s.stages[-1]
    if s.evaluations.final:
      summary = evaluate(carry.params, name=name, tag=s.method.final_tag,
                         checkpoint=f"{final_stage} stage, last step "
                                    f"({stages_lib.stage_steps(c, final_stage)})",
                         training=_training_label(r, carry.base_label))
    best = r.runner.offer_best(final_stage, carry.params) if s.method.judge_data else None
    if best is not None:
      logging.info("best checkpoint by validation %s: step %d (%.4f) in %s", best["metric"],
                   best["step"], best["value"], os.path.join(workdir, "ckpt", final_stage + "_best"))
    _print_results(workdir, time.time() - t_start, r.writer)
    return summary
  finally:
    r.writer.close()


def _training_label(run: Run, base_label: str) -> str:
  """How the final row's model was trained, and how many of its optimiser steps were skipped
  as non-finite (when any were)."""
  label = _method_label(run, base_label)
  stage = run.settings.stages[-1]
  skipped, opt_steps = run.runner.skipped_steps.get(stage, (0, 0))
  if skipped:
    label += (f"; {skipped} of {opt_steps} optimiser steps of stage {stage} SKIPPED (non-finite "
              "loss, gradient or update)")
  return label


def _method_label(run: Run, base_label: str) -> str:
  """How the final row's model was trained (method settings; for TRACT the stage-2 start)."""
  c, s = run.config, run.settings
  if s.rl is not None:
    return (f"{c.rl.steps} updates from {base_label}; {s.rl.label}; filter {c.rl.filter}, "
            f"{c.rl.epochs} epoch(s)")
  if "tract_gen" in s.stages:
    gen = tract.tract_gen_counts(run.workdir)
    return (f"stage 1: {stages_lib.stage_steps(c, 'tract1')} steps from {base_label}; stage 2 "
            f"retrained from {base_label} (the model stage 1 started from) on its self-CoTs "
            f"({gen})")
  return f"{stages_lib.stage_steps(c, s.stages[-1])} steps from {base_label}"


RESULT_COLUMNS = ("model", "split", "readout", "n", "pearson", "spearman", "kendall", "mse")


def results_table(workdir: str) -> list[list[Any]]:
  """results.json as rows of RESULT_COLUMNS: one per evaluated model, split and readout."""
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    rows = json.load(f)["rows"]
  out = []
  for row in rows:
    for split, s in row["summary"].get("splits", {}).items():
      for readout in ("rail", "standard"):
        m = s.get(readout, {})
        out.append([row["name"], split, readout, m.get("n", 0)] +
                   [m.get(k, float("nan")) for k in RESULT_COLUMNS[4:]])
  return out


def _print_results(workdir: str, seconds: float, writer: MetricsWriter | None = None) -> None:
  if writer is not None:
    writer.write_table("results", RESULT_COLUMNS, results_table(workdir))
  path = os.path.join(workdir, "results.md")
  if os.path.exists(path):
    with open(path) as f:
      print(f.read())
  print(f"workdir: {workdir} (this invocation: {seconds:.0f}s)")
  sys.stdout.flush()


FLAGS = flags.FLAGS
_CONFIG = config_flags.DEFINE_config_file(
    "config", _DEFAULT_CONFIG if os.path.exists(_DEFAULT_CONFIG) else None,
    "Config file (configs/FILE.py[:ARG]); fields can be overridden with --config.x=...",
    lock_config=True)
flags.DEFINE_string("workdir", "workdirs/default", "Run directory: checkpoints, metrics, results.")
flags.DEFINE_bool("force_unlock", False,
                  "Take the workdir's lock (run.lock) even if its holder looks alive: for a lock "
                  "left by a process on another host that is known to be gone. Two live runs in "
                  "one workdir mix their results.")
flags.DEFINE_bool("multihost", False,
                  "Call jax.distributed.initialize() first (every host of a multi-host slice runs "
                  "the same command; the workdir must be on storage all hosts share). On TPU "
                  "slices and SLURM/Open MPI GPU clusters the addresses are detected; elsewhere "
                  "pass the three flags below.")
flags.DEFINE_bool("print_config", False,
                  "Print the resolved config (the file, its :arg and every --config.* override), "
                  "one `field = value  # meaning` line per field, then exit without running.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (with --multihost).")
flags.DEFINE_integer("num_processes", None, "Number of processes (with --multihost).")
flags.DEFINE_integer("process_id", None, "This process's index (with --multihost).")


class _QuietConsole:
  """Drops what tells the user nothing from the absl log: orbax's and TFDS's INFO chatter
  (dozens of lines per checkpoint and per prepared split) and TFDS's warnings about our own
  dataset configs ("Using custom data configuration", "Variant folder ... has no
  dataset_info.json" before a split is first prepared). Every other warning is kept."""

  _TFDS_NOISE = ("Using custom data configuration", "has no dataset_info.json")

  def filter(self, record) -> bool:
    library = "orbax" in record.pathname or "tensorflow_datasets" in record.pathname
    if record.levelno < pylogging.WARNING:
      return not library
    if "tensorflow_datasets" in record.pathname and record.levelno == pylogging.WARNING:
      return not any(s in record.getMessage() for s in self._TFDS_NOISE)
    return True


def main(argv):
  del argv
  if FLAGS.print_config:
    overrides = [a for a in sys.argv[1:] if a.startswith("--config.")]
    print(f"# --config {FLAGS['config'].serialize().partition('=')[2]} {' '.join(overrides)}"
          .rstrip() + "\n# `default X`: a value the config file or an override changed")
    print(config_lib.describe(_CONFIG.value))
    return
  logging.get_absl_handler().addFilter(_QuietConsole())
  tfds.disable_progress_bar()  # our own report follows each prepared split
  shd.use_cpu_without_accelerator()
  if FLAGS.multihost:
    jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                               num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
    logging.info("process %d of %d, %d local / %d global devices", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())
  try:
    run(_CONFIG.value, os.path.abspath(FLAGS.workdir), force_unlock=FLAGS.force_unlock)
  except config_lib.ConfigError as e:
    print(f"config error: {e}", file=sys.stderr)
    sys.exit(2)
  except workdir_lib.WorkdirBusy as e:
    print(f"workdir error: {e}", file=sys.stderr)
    sys.exit(2)
  except ckpt_lib.NoRestorableCheckpoint as e:
    print(f"checkpoint error: {e}", file=sys.stderr)
    sys.exit(2)
  except batching.TooFewRowsError as e:
    print(f"input error: {e}", file=sys.stderr)
    sys.exit(2)
  except TooManySkippedSteps as e:
    print(f"training stopped: {e}", file=sys.stderr)
    sys.exit(1)


def _flag_error_line(e: BaseException) -> str:
  """One line for an error raised while parsing the flags (a config override or argument)."""
  root = e
  while (root.__cause__ is not None or root.__context__ is not None) and not isinstance(
      root, (AttributeError, KeyError)):  # the outermost lookup error carries the hint
    root = root.__cause__ or root.__context__
  if isinstance(root, config_lib.ConfigError):
    return str(root)
  while isinstance(root, (AttributeError, KeyError)) and root.args and isinstance(
      root.args[0], BaseException):
    root = root.args[0]  # ml_collections wraps the KeyError in an AttributeError
  bad = [a.split("=")[0] for a in sys.argv[1:] if a.startswith("--config.")]
  where = f" ({', '.join(bad)})" if bad else ""
  if isinstance(root, (AttributeError, KeyError)):
    text = root.args[0] if root.args and isinstance(root.args[0], str) else str(root)
    name, _, hint = text.partition("\n")
    return (f"unknown config field {name}{where}. {hint} `--help` lists the fields").replace(
        ".  ", ". ")
  return " ".join(f"{root}{where}".split())


_HELP_FLAGS = ("-h", "--help", "-help", "--helpshort", "--helpfull", "-?")


def _help(argv) -> str:
  """`--help`: this module's docstring and flags, then every config field with its default and
  meaning; `--helpfull` also lists the flags of every imported module."""
  flag_help = FLAGS.get_help() if "--helpfull" in argv else FLAGS.main_module_help()
  methods = [f"  {m.name:<9} {m.doc}" for m in methods_lib.METHODS.values()]
  return "\n".join([
      __doc__.strip(), "", "Methods (config.method):", *methods, "", "Flags:", flag_help, "",
      "Config fields (--config.FIELD=VALUE; defaults of config_lib.base_config, which configs/*.py "
      "change; `--print_config` shows a config's values):", "",
      config_lib.describe(config_lib.base_config())])


def _parse_flags(argv):
  """absl's flag parsing, with config errors as one line and exit status 2 (no traceback);
  help exits 0."""
  if any(a in _HELP_FLAGS for a in argv[1:]):
    print(_help(argv))
    sys.exit(0)
  for i, a in enumerate(argv[1:], 1):
    spec = a.partition("=")[2] if a.startswith("--config=") else (
        argv[i + 1] if a == "--config" and i + 1 < len(argv) else None)
    if spec is not None and not os.path.isfile(spec.split(":", 1)[0]):
      print(f"config error: config file {spec.split(':', 1)[0]!r} not found (from --config="
            f"{spec}); pass a file such as configs/synthetic.py", file=sys.stderr)
      sys.exit(2)
  try:
    return FLAGS(argv)
  except Exception as e:  # noqa: BLE001 - every parse failure is reported the same way
    print(f"config error: {_flag_error_line(e)}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  logging.set_verbosity(logging.INFO)
  app.run(main, flags_parser=_parse_flags)
