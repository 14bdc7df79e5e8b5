r"""Will it fit? Compiles a run's programs ahead of time for a TPU topology and reports memory.

  pip install -e ".[tpu]"      # libtpu: the TPU compiler, usable without a TPU
  python -m real_jax.tools.plan --config configs/prometheus.py:size=8b --topology v5p:2x2x2
  python -m real_jax.tools.plan --config configs/synthetic.py:runlocal --topology v5e:2x2 \
      --set model.preset=tiny --json plan.json
  python -m real_jax.tools.plan --summarize plan_*.json     # one table over several reports
  python -m real_jax.tools.plan --config configs/prometheus.py:size=8b --gpu h100:8  # estimate

Builds the run's real programs on the topology's devices with the config's mesh — the RL train
step (REAL / standard RL) or the supervised step of the method, the warm-up SFT step when the
run has one, the rollout sampler at `rl.sample_prompts` prompts x `rl.group_size` samples, the
rollout scoring pass, and the evaluation sampler — lowers them with abstract inputs
(`jax.ShapeDtypeStruct`s carrying their shardings, nothing allocated) and compiles them with the
TPU compiler. Per program it prints the compiler's per-device argument, output, temporary and
peak bytes against the chip's HBM, whether it fits with `--headroom`, and the compile time. The
chip's usable HBM is the compiler's own figure (read from the message of a compile that cannot
fit). A program the compiler refuses is reported with the compiler's message. Exit status: 0
when every program fits, 1 when one does not, 2 for a bad config or topology.

With `--suggest` it searches, for each sized program, the largest setting that fits with the
headroom: `rl.sample_prompts` (the rollout sampler), `rl.micro_batch_size` (the RL step),
`train.micro_batch_size` (the SFT / RAFT / TRACT step), `warmup.micro_batch_size` (the warm-up
step), among the values the config accepts (divisors of the batch, multiples of the mesh's batch
shards); memory grows with each, so a bisection compiles a handful of programs (a program that
cannot fit is refused by the compiler in seconds). It prints the `--config.*` overrides.

Topology names are libtpu's: `v5e:2x2` (4 v5e chips), `v5p:2x2x1` (4 v5p chips = a "v5p-8"
slice, whose name counts TensorCores), `v5p:2x2x2` (8 chips).

GPUs (`--gpu h100:8`, `h200:8`, `a100:8`): JAX compiles for a GPU only on a machine with one, so
the GPU plan is an estimate: `memory_table.program_estimate`'s analytic parts times a per-program
factor calibrated on the TPU compiles (`memory_table.CALIBRATION`), against the memory JAX lets a
process take (`XLA_PYTHON_CLIENT_MEM_FRACTION`, 0.75 of the card unless set).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import topologies

from real_jax import models, readout, sampling
from real_jax import sharding as shd
from real_jax.judge.scales import as_scale
from real_jax.judge.scores import ScoreTokens
from real_jax.train import config_lib, data_utils, state as state_lib, steps as steps_lib
from real_jax.train.batch import LMBatch, RLBatch
from real_jax.train import methods as methods_lib
from real_jax.train import settings as settings_lib
from real_jax.train.supervised import objective_for
from real_jax.train.rl import rl_objective
from real_jax.tools import memory_table

__all__ = ["ProgramReport", "topology_devices", "usable_hbm", "programs", "compile_report",
    "plan", "SIZED", "suggest", "suggest_markdown", "markdown", "summary_table", "GPUS",
    "gpu_plan", "gpu_markdown", "main"]

# Stand-in score tokens: ids and values only shape the programs, never their memory.
_SCORE_TOKENS = ScoreTokens(token_ids=(16, 17, 18, 19, 20), values=(1.0, 2.0, 3.0, 4.0, 5.0),
                            delimiter_ids=(5, 6, 7), eos_id=2)


def _stand_in_scores(scores: str) -> ScoreTokens:
  """Stand-in score tokens of the config's scale (`data.scores`). Where a score has several
  digits, the digits are taken as split into tokens (Qwen, Llama 3): the programs then read one
  pass per path of the score tree (`models.score_candidates`), which their memory reflects."""
  scale = as_scale(scores)
  if all(len(label) == 1 for label in scale.labels):
    return dataclasses.replace(_SCORE_TOKENS, token_ids=tuple(16 + i for i in range(len(
        scale.labels))), values=scale.values)
  digit = lambda ch: 16 + int(ch)
  seqs = tuple(tuple(map(digit, label)) for label in scale.labels)
  return dataclasses.replace(_SCORE_TOKENS, token_ids=tuple(s[0] for s in seqs),
                             values=scale.values, continuation_ids=tuple(range(16, 26)),
                             candidates=seqs)
_GIB = 2 ** 30


@dataclasses.dataclass
class ProgramReport:
  """One compiled program: per-device bytes (the compiler's `memory_analysis`), or its error."""
  name: str
  shape: str
  argument: int = 0
  output: int = 0
  temp: int = 0
  alias: int = 0
  peak: int = 0
  seconds: float = 0.0
  fits: bool = False
  error: str = ""


def topology_devices(name: str):
  """The devices of a TPU topology (no TPU needed: libtpu describes it)."""
  try:
    topo = topologies.get_topology_desc(topology_name=name, platform="tpu")
  except Exception as e:  # libtpu missing, or an unknown name
    raise config_lib.ConfigError(
        f"topology {name!r} unavailable ({str(e).splitlines()[0][:200]}); install the TPU "
        "compiler with pip install -e \".[tpu]\" and use a libtpu name such as v5e:2x2 or "
        "v5p:2x2x2") from None
  return list(topo.devices)


_HBM_RE = re.compile(r"available HBM \(([\d.]+)([KMGT])\)|([\d.]+)([KMGT]) of HBM")


def usable_hbm(devices) -> int:
  """The usable HBM bytes of one chip, as the compiler states it when a program cannot fit."""
  mesh = shd.make_mesh({"data": 1}, devices=devices[:1])
  rep = shd.replicated(mesh)
  huge = 1 << 42  # 16 TiB of float32: more than any chip
  fn = jax.jit(lambda: jnp.zeros((huge // 4,), jnp.float32), out_shardings=rep)
  try:
    fn.lower().compile()
  except Exception as e:
    m = _HBM_RE.search(str(e))
    if m:
      value, unit = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
      return int(float(value) * {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}[unit])
    raise RuntimeError(f"could not read the HBM size from the compiler: {str(e)[:300]}") from None
  raise RuntimeError("a 16 TiB program compiled: is this a TPU topology?")


def _input(shape, dtype, mesh):
  """An abstract [batch, ...] input, the batch axis over the data axes."""
  return jax.ShapeDtypeStruct(shape, dtype, sharding=shd.batch_sharding(mesh, len(shape)))


def _batch_sds(cls, mesh, **fields):
  """A typed batch of abstract inputs ((shape, dtype) per field)."""
  return cls(**{k: _input(s, d, mesh) for k, (s, d) in fields.items()})


def programs(config, mesh) -> dict[str, tuple[Any, tuple, str]]:
  """name -> (jitted function, abstract arguments, shape description) of the run's programs."""
  c = config
  # The plan needs shapes, not weights; `auto` attention resolves for the target's platform.
  cfg = config_lib.preset_model(c, platform=mesh.devices.flat[0].platform)
  graphdef, abstract = models.abstract_model(cfg)
  p_sh = models.param_shardings(abstract, mesh)
  params = state_lib.abstract_like(abstract, p_sh)
  lp = max(data_utils.prompt_buckets(c))
  out: dict[str, tuple[Any, tuple, str]] = {}

  def train_step(name, loss, batch, num_micro, steps):
    tx = state_lib.optimizer_from_config(c.optim, steps=max(steps, 1))
    sh = state_lib.state_shardings(abstract, tx, mesh)
    state = state_lib.abstract_like(state_lib.abstract_state(abstract, tx), sh)
    fn = steps_lib.make_train_step(loss, graphdef, tx, mesh, sh, batch, num_micro=num_micro)
    rows, width = batch.tokens.shape
    out[name] = (fn, (state, batch), f"{rows} rows x {width} tokens, {num_micro} micro-batches")

  def lm_batch(rows, width):
    i32, f32 = jnp.int32, jnp.float32
    return _batch_sds(LMBatch, mesh, tokens=((rows, width), i32), mask=((rows, width), bool),
                      loss_mask=((rows, width), f32), score_pos=((rows,), i32),
                      target=((rows,), f32), target_id=((rows,), i32),
                      sample_mask=((rows,), f32))

  score_tokens = _stand_in_scores(c.data.scores)
  run_settings = settings_lib.resolve(c, score_tokens.values)
  method = c.method
  if methods_lib.WARMUP_STAGE in run_settings.stages:
    w = c.warmup
    train_step("warmup_step", objective_for("sft", c, score_tokens),
               lm_batch(w.batch_size, lp + c.data.max_target_len),
               w.batch_size // w.micro_batch_size if w.micro_batch_size else 1, w.steps)
  final = methods_lib.STAGES.lookup(run_settings.stages[-1]) if run_settings.stages else None
  if final is not None and final.loss and final.batch[0] == "train.batch_size":
    t = c.train
    loss = objective_for(final.loss, c, score_tokens)
    train_step(f"{method}_step", loss, lm_batch(t.batch_size, lp + c.data.max_target_len),
               t.batch_size // t.micro_batch_size if t.micro_batch_size else 1, t.steps)
  if run_settings.rl is not None:
    rl = c.rl
    loss = rl_objective(score_tokens, c, run_settings.rl)
    rows, width = rl.mini_batch_size, lp + rl.max_response_len + 1
    i32, f32 = jnp.int32, jnp.float32
    seq = ((rows, width), f32)
    batch = _batch_sds(RLBatch, mesh, tokens=((rows, width), i32), mask=((rows, width), bool),
                       score_pos=((rows,), i32), cot_mask=seq, old_lp=seq, ref_lp=seq,
                       target=((rows,), f32), target_id=((rows,), i32), adv=((rows,), f32),
                       pg_keep=((rows,), f32), refine_keep=((rows,), f32))
    train_step("rl_step", loss, batch,
               rows // rl.micro_batch_size if rl.micro_batch_size else 1, rl.steps)
    settings = readout.SamplerSettings(max_new_tokens=rl.max_response_len,
                                       temperature=rl.temperature, top_p=rl.top_p,
                                       top_k=rl.top_k)
    prompts = rl.sample_prompts or rl.prompts_per_step
    out["rollout_sampler"] = _sampler(graphdef, params, settings, prompts, rl.group_size, lp,
                                      mesh)
    score_rows = rl.score_batch_size or rl.micro_batch_size or rl.mini_batch_size
    score_fn = readout.make_score_fn(
        graphdef, score_tokens, mesh, score_temperature=rl.score_temperature,
        renormalize=rl.renormalize, sample_temperature=rl.temperature, top_p=rl.top_p,
        top_k=rl.top_k, greedy=False, response_width=rl.max_response_len + 1)
    out["rollout_scoring"] = _scoring(score_fn, params, score_rows, width, mesh)
  if run_settings.evaluations.any:
    e = c.eval
    settings = readout.SamplerSettings(max_new_tokens=e.max_response_len,
                                       temperature=e.temperature, top_p=e.top_p,
                                       greedy=e.greedy)
    out["eval_sampler"] = _sampler(graphdef, params, settings, e.batch_size, 1, lp, mesh)
  return out


def _sampler(graphdef, params, settings, prompts: int, n: int, lp: int, mesh):
  cfg = readout.sampling_config(settings, _SCORE_TOKENS, 0, (lp,))
  fn = sampling.sampler_program(graphdef, cfg, num_samples=n, mesh=mesh)
  b = lambda shape, dt: _input(shape, dt, mesh)
  key = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=shd.replicated(mesh))
  args = (params, b((prompts, lp), jnp.int32), b((prompts, lp), bool), key,
          b((prompts,), jnp.int32))
  return fn, args, (f"{prompts} prompts x {n} samples, prompt {lp} + "
                    f"{settings.max_new_tokens} new tokens")


def _scoring(score_fn, params, rows: int, width: int, mesh):
  b = lambda shape, dt: _input(shape, dt, mesh)
  batch = {"tokens": b((rows, width), jnp.int32), "mask": b((rows, width), bool),
           "score_pos": b((rows,), jnp.int32), "target_id": b((rows,), jnp.int32),
           "probe": b((rows,), jnp.int32), "u": b((rows,), jnp.float32)}
  return score_fn, (params, batch), f"{rows} rows x {width} tokens"


def compile_report(name: str, fn, args, shape: str, hbm: int, headroom: float) -> ProgramReport:
  """Compiles one program ahead of time; its per-device memory against `hbm`."""
  r = ProgramReport(name, shape)
  t0 = time.time()
  try:
    m = fn.lower(*args).compile().memory_analysis()
  except Exception as e:  # the TPU compiler refuses programs that exceed HBM
    r.seconds = time.time() - t0
    lines = [l for l in str(e).splitlines() if l.strip()]
    r.error = next((l for l in lines if "HBM" in l or "memory" in l.lower()), lines[0] if lines
                   else type(e).__name__)[:400]
    return r
  r.seconds = time.time() - t0
  r.argument, r.output = int(m.argument_size_in_bytes), int(m.output_size_in_bytes)
  r.temp, r.alias = int(m.temp_size_in_bytes), int(m.alias_size_in_bytes)
  r.peak = int(getattr(m, "peak_memory_in_bytes", 0) or
               (r.argument + r.output - r.alias + r.temp))
  r.fits = r.peak <= hbm * (1.0 - headroom)
  return r


def _target(config, topology: str):
  """(the topology's devices, the config's mesh over them, one chip's usable HBM bytes)."""
  devices = topology_devices(topology)
  mesh_shape = config_lib.validate(config, len(devices))
  n = mesh_shape["data"] * mesh_shape["fsdp"] * mesh_shape["tensor"]
  return devices, shd.make_mesh(mesh_shape, devices=devices[:n]), usable_hbm(devices)


def plan(config, topology: str, *, headroom: float = 0.1, only: tuple[str, ...] = ()
         ) -> dict[str, Any]:
  """Compiles the config's programs for `topology`; returns the report (JSON-able)."""
  devices, mesh, hbm = _target(config, topology)
  mesh_shape = dict(mesh.shape)
  reports = []
  for name, (fn, args, shape) in programs(config, mesh).items():
    if only and name not in only:
      continue
    reports.append(compile_report(name, fn, args, shape, hbm, headroom))
  return {"topology": topology, "chips": len(devices), "device_kind": devices[0].device_kind,
          "mesh": mesh_shape, "hbm_bytes": hbm, "headroom": headroom,
          "model": config.model.preset, "method": config.method,
          "attention": config_lib.attention_backend(config, devices[0].platform),
          "lora": (f"rank {config.model.lora.rank}" + (
              f", {config.model.lora.quantize}" if config.model.lora.quantize else "")
                   if config.model.lora.rank else ""),
          "programs": [dataclasses.asdict(r) for r in reports],
          "fits": all(r.fits for r in reports)}


# program -> (the config field that sizes it, the field whose value it must divide)
SIZED = {"rollout_sampler": ("rl.sample_prompts", "rl.prompts_per_step"),
         "rl_step": ("rl.micro_batch_size", "rl.mini_batch_size"),
         "sft_step": ("train.micro_batch_size", "train.batch_size"),
         "raft_step": ("train.micro_batch_size", "train.batch_size"),
         "tract_step": ("train.micro_batch_size", "train.batch_size"),
         "warmup_step": ("warmup.micro_batch_size", "warmup.batch_size")}


def suggest(config, topology: str, *, headroom: float = 0.1, only: tuple[str, ...] = ()
            ) -> list[dict[str, Any]]:
  """For each sized program of the run (SIZED), the largest accepted value of its field whose
  program fits `topology` with `headroom`, by bisection over the accepted values."""
  _, mesh, hbm = _target(config, topology)
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  out = []
  for name in programs(config, mesh):
    if name not in SIZED or (only and name not in only):
      continue
    field, total_field = SIZED[name]
    total = int(config_lib.get_field(config, total_field))
    values = [v for v in range(shards, total + 1, shards) if total % v == 0]
    tried: dict[int, ProgramReport] = {}

    def fits(v):
      c = config.copy_and_resolve_references()
      config_lib.set_field(c, field, str(v))
      fn, args, shape = programs(c, mesh)[name]
      tried[v] = compile_report(name, fn, args, shape, hbm, headroom)
      return tried[v].fits

    lo, hi = -1, len(values)  # values[:lo+1] fit (memory grows with the value); values[hi:] not
    while hi - lo > 1:
      mid = (lo + hi) // 2
      if fits(values[mid]):
        lo = mid
      else:
        hi = mid
    best = values[lo] if lo >= 0 else None
    out.append({"program": name, "field": field, "current": int(config_lib.get_field(config, field)) or total,
                "best": best, "peak": tried[best].peak if best else 0,
                "hbm_bytes": hbm, "headroom": headroom,
                "tried": {v: (r.peak if not r.error else None) for v, r in sorted(tried.items())},
                "seconds": sum(r.seconds for r in tried.values())})
  return out


def suggest_markdown(rows: list[dict[str, Any]]) -> str:
  lines = ["| program | field | current | largest that fits | its peak / device | compiled |",
           "|---|---|---:|---:|---:|---|"]
  for r in rows:
    tried = ", ".join(f"{v}: {'%.2f GiB' % (p / _GIB) if p is not None else 'refused'}"
                      for v, p in r["tried"].items())
    best = r["best"] if r["best"] is not None else "none"
    lines.append(f"| {r['program']} | {r['field']} | {r['current']} | {best} | "
                 f"{r['peak'] / _GIB:.2f} GiB | {tried} ({r['seconds']:.0f} s) |")
  flags = [f"--config.{r['field']}={r['best']}" for r in rows if r["best"] is not None]
  return "\n".join(lines + ["", "overrides: " + " ".join(flags)])


def markdown(report: dict[str, Any]) -> str:
  hbm = report["hbm_bytes"] / _GIB
  attn = report.get("attention", "chunked")
  lines = [f"{report['model']} {report['method']} ({attn} attention) on {report['topology']} "
           f"({report['chips']} x {report['device_kind']}, {hbm:.2f} GiB HBM each), mesh "
           f"{report['mesh']}, headroom {100 * report['headroom']:.0f}%", "",
           "| program | shape | arguments | temp | peak / device | of HBM | fits | compile |",
           "|---|---|---:|---:|---:|---:|---|---:|"]
  for p in report["programs"]:
    if p["error"]:
      lines.append(f"| {p['name']} | {p['shape']} | – | – | – | – | **no**: "
                   f"{p['error'].replace('|', '/')} | {p['seconds']:.0f} s |")
      continue
    lines.append(f"| {p['name']} | {p['shape']} | {p['argument'] / _GIB:.2f} GiB | "
                 f"{p['temp'] / _GIB:.2f} GiB | {p['peak'] / _GIB:.2f} GiB | "
                 f"{100 * p['peak'] / report['hbm_bytes']:.0f}% | "
                 f"{'yes' if p['fits'] else '**no**'} | {p['seconds']:.0f} s |")
  return "\n".join(lines)


def summary_table(reports: list[dict[str, Any]]) -> str:
  """One row per (model, topology): peak GiB per chip of each program, and whether all fit."""
  names = []
  for r in reports:
    names += [p["name"] for p in r["programs"] if p["name"] not in names]
  names.sort(key=lambda n: n == "eval_sampler")  # the train steps first, evaluation last
  lines = ["| model | method | topology (chips) | mesh | " + " | ".join(names) + " | fits |",
           "|---|---|---|---|" + "---:|" * len(names) + "---|"]
  for r in reports:
    by = {p["name"]: p for p in r["programs"]}
    cells = []
    for n in names:
      p = by.get(n)
      cells.append("–" if p is None else ("does not compile" if p["error"] else
                                          f"{p['peak'] / _GIB:.1f}"))
    m = r["mesh"]
    attn = r.get("attention", "chunked")  # reports before the field: chunked
    model = r["model"] if attn == "chunked" else f"{r['model']} ({attn} attention)"
    if r.get("lora"):  # reports before the field: full fine-tuning
      model += f" (LoRA {r['lora']})"
    lines.append(f"| {model} | {r['method']} | {r['topology']} ({r['chips']} x "
                 f"{r['device_kind']}, {r['hbm_bytes'] / _GIB:.2f} GiB) | "
                 f"{m['data']}x{m['fsdp']}x{m['tensor']} | " + " | ".join(cells) +
                 f" | {'yes' if r['fits'] else '**no**'} |")
  return "\n".join(lines)


# nvidia-smi's total memory per card (MiB).
GPUS = {"h100": 81559, "h200": 143771, "a100": 81920}


def gpu_plan(config, gpu: str, *, headroom: float = 0.1) -> dict[str, Any]:
  """The analytic, TPU-calibrated estimate of each program's bytes per GPU (labelled estimate)."""
  kind, _, count = gpu.partition(":")
  if kind not in GPUS or not count.isdigit() or int(count) < 1:
    raise config_lib.ConfigError(f"--gpu {gpu!r}: expected KIND:COUNT with KIND one of "
                                 f"{sorted(GPUS)}, e.g. h100:8")
  chips = int(count)
  mesh_shape = config_lib.validate(config, chips)
  fraction = float(os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.75"))
  usable = int(GPUS[kind] * 2**20 * fraction)
  programs = []
  attention = config_lib.attention_backend(config, "gpu")  # what `auto` runs on a GPU
  for name, parts in memory_table.program_estimate(config, mesh_shape, attention).items():
    analytic = sum(parts.values())
    est = memory_table.calibrated(name, analytic, memory_table.CALIBRATION)
    programs.append({"name": name, "parts": parts, "analytic": analytic, "estimate": est,
                     "fits": est <= usable * (1.0 - headroom)})
  return {"gpu": kind, "chips": chips, "mesh": mesh_shape, "usable_bytes": usable,
          "mem_fraction": fraction, "headroom": headroom, "model": config.model.preset,
          "method": config.method, "attention": attention, "programs": programs,
          "fits": all(p["fits"] for p in programs)}


def gpu_markdown(report: dict[str, Any]) -> str:
  lines = [f"ESTIMATE (analytic x TPU-calibrated factor; no GPU compiler without a GPU): "
           f"{report['model']} {report['method']} ({report.get('attention', 'chunked')} "
           f"attention) on {report['chips']} x {report['gpu']}, mesh "
           f"{report['mesh']}, {report['usable_bytes'] / _GIB:.1f} GiB usable per GPU "
           f"(XLA_PYTHON_CLIENT_MEM_FRACTION={report['mem_fraction']}), headroom "
           f"{100 * report['headroom']:.0f}%", "",
           "| program | largest parts | analytic | estimate / GPU | fits |", "|---|---|---:|---:|---|"]
  for p in report["programs"]:
    top = sorted(p["parts"].items(), key=lambda kv: -kv[1])[:3]
    parts = ", ".join(f"{k} {v / _GIB:.1f}" for k, v in top)
    lines.append(f"| {p['name']} | {parts} | {p['analytic'] / _GIB:.1f} GiB | "
                 f"{p['estimate'] / _GIB:.1f} GiB | {'yes' if p['fits'] else '**no**'} |")
  return "\n".join(lines)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--config", help="configs/FILE.py[:ARG]")
  p.add_argument("--topology", help="libtpu topology, e.g. v5e:2x2, v5p:2x2x2")
  p.add_argument("--gpu", default="", help="KIND:COUNT (h100:8, h200:8, a100:8): the estimate")
  p.add_argument("--summarize", nargs="+", metavar="JSON",
                 help="print one table (peak GiB per chip) of reports written with --json")
  p.add_argument("--headroom", type=float, default=0.1,
                 help="fraction of HBM a program must leave free to count as fitting")
  p.add_argument("--only", default="", help="comma-separated program names")
  p.add_argument("--suggest", action="store_true",
                 help="find the largest sample_prompts / micro-batch sizes that fit")
  p.add_argument("--json", default="", help="also write the report as JSON here")
  p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                 help="config override, e.g. --set rl.sample_prompts=32 (repeatable)")
  a, rest = p.parse_known_args(argv)
  if a.summarize:
    reports = []
    for path in a.summarize:
      with open(path) as f:
        reports.append(json.load(f))
    print(summary_table(reports))
    return 0
  if not (a.config and (a.topology or a.gpu)):
    print("plan: --config and --topology (or --gpu) are required, or --summarize JSON...",
          file=sys.stderr)
    return 2
  overrides = list(a.set) + [r[len("--config."):] for r in rest if r.startswith("--config.")]
  unknown = [r for r in rest if not r.startswith("--config.")]
  if unknown:
    print(f"plan: unknown arguments {unknown}", file=sys.stderr)
    return 2
  try:
    config = config_lib.load_config(a.config)
    for o in overrides:
      key, _, value = o.partition("=")
      config_lib.set_field(config, key, value)
    only = tuple(x for x in a.only.split(",") if x)
    if a.gpu:
      report = gpu_plan(config, a.gpu, headroom=a.headroom)
    elif a.suggest:
      rows = suggest(config, a.topology, headroom=a.headroom, only=only)
    else:
      report = plan(config, a.topology, headroom=a.headroom, only=only)
  except config_lib.ConfigError as e:
    print(f"config error: {e}", file=sys.stderr)
    return 2
  if a.suggest:
    print(suggest_markdown(rows))
    if a.json:
      with open(a.json, "w") as f:
        json.dump(rows, f, indent=2)
    missing = [r["program"] for r in rows if r["best"] is None]
    if missing:
      print("no setting fits: " + ", ".join(missing), file=sys.stderr)
      return 1
    return 0
  report["config"], report["overrides"] = a.config, overrides  # what the estimate is checked on
  print(gpu_markdown(report) if a.gpu else markdown(report))
  if a.json:
    with open(a.json, "w") as f:
      json.dump(report, f, indent=2)
  if not report["fits"]:
    print("does not fit: " + ", ".join(pr["name"] for pr in report["programs"]
                                        if not pr["fits"]), file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
