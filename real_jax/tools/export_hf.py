r"""Writes a trained model of a run as a Hugging Face directory.

  python -m real_jax.tools.export_hf --workdir workdirs/synthetic --out exported/real-judge
  python -m real_jax.tools.export_hf --workdir W --stage warmup --out DIR    # an earlier stage
  python -m real_jax.tools.export_hf --workdir W --best --out DIR            # best-by-eval

The directory holds config.json + model.safetensors (Qwen3ForCausalLM, MistralForCausalLM, ...),
the run's tokenizer and generation_config.json (the run's EOS and its evaluation sampling
settings), so `transformers.AutoModelForCausalLM.from_pretrained(DIR)` and `AutoTokenizer` load
it and `generate` stops at the EOS our sampler stops at.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

import jax
from jax.sharding import SingleDeviceSharding

from real_jax import sharding as shd
from real_jax.data.synthetic_corpus import PROBES_FILE
from real_jax.judge import load_tokenizer
from real_jax.models import abstract_model
from real_jax.models.hf import export_hf, write_generation_config
from real_jax.models.qwen3 import Qwen3Config
from real_jax.train import checkpoint as ckpt_lib
from real_jax.train.methods import METHODS

__all__ = ["export_run", "main"]


def export_run(workdir: str, out_dir: str, *, stage: str = "", best: bool = False,
               dtype: str | None = None) -> str:
  """Restores a run's parameters (last stage by default) and exports them; returns out_dir."""
  with open(os.path.join(workdir, "run.json")) as f:
    run = json.load(f)
  cfg = Qwen3Config(**run["model"])
  _, abstract = abstract_model(cfg)
  dev = SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=dev), abstract)
  d, step, params = ckpt_lib.restore_run_params(workdir, target, stage=stage, best=best)
  ids = _token_ids(run)
  export_hf(out_dir, cfg, params, dtype=dtype, token_ids=ids)
  tok_dir = run.get("tokenizer")
  if tok_dir and os.path.exists(tok_dir):
    load_tokenizer(tok_dir).save_pretrained(out_dir)
  if "eos_token_id" in ids:
    ev = run.get("config", {}).get("eval", {})
    write_generation_config(
        out_dir, eos_token_id=ids["eos_token_id"], pad_token_id=ids.get("pad_token_id"),
        bos_token_id=ids.get("bos_token_id"), do_sample=not ev.get("greedy", False),
        temperature=ev.get("temperature", 1.0), top_p=ev.get("top_p", 1.0),
        max_new_tokens=ev.get("max_response_len"))
  with open(os.path.join(out_dir, "real_jax_export.json"), "w") as f:
    json.dump({"workdir": os.path.basename(os.path.abspath(workdir)),
               "checkpoint": os.path.relpath(d, workdir), "step": step,
               "method": run.get("config", {}).get("method"),
               "seed": run.get("config", {}).get("seed"),
               "output_format": run.get("config", {}).get("data", {}).get("output_format",
                                                                         "score_phrase"),
               "scores": run.get("config", {}).get("data", {}).get("scores", "1-5")}, f, indent=2)
  method = METHODS.get(run.get("config", {}).get("method"))
  if method is not None and not method.judge_data:  # a base keeps its training record
    _copy_pretrain_record(workdir, out_dir)
  return out_dir


def _token_ids(run: dict) -> dict[str, int]:
  """The run's EOS (the token its sampler stops at), pad and BOS ids, for config.json and
  generation_config.json; empty for a run.json without them."""
  out: dict[str, int] = {}
  eos = (run.get("score_tokens") or {}).get("eos_id")
  tok_dir = run.get("tokenizer")
  tok = load_tokenizer(tok_dir) if tok_dir and os.path.exists(tok_dir) else None
  if eos is None and tok is not None:
    eos = tok.eos_token_id
  if eos is not None:
    out["eos_token_id"] = int(eos)
  if tok is not None:
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    if pad is not None:
      out["pad_token_id"] = int(pad)
    if tok.bos_token_id is not None:
      out["bos_token_id"] = int(tok.bos_token_id)
  return out


def _copy_pretrain_record(workdir: str, out_dir: str) -> None:
  """pretrain_probes.json and the pretraining metrics (pretrain_metrics.jsonl) next to the
  weights: what `tests/test_pretrain.py` checks a committed base against."""
  if os.path.exists(os.path.join(workdir, PROBES_FILE)):
    shutil.copy(os.path.join(workdir, PROBES_FILE), os.path.join(out_dir, PROBES_FILE))
  with open(os.path.join(workdir, "metrics.jsonl")) as f, \
       open(os.path.join(out_dir, "pretrain_metrics.jsonl"), "w") as g:
    for line in f:
      if json.loads(line).get("stage") == "pretrain":
        g.write(line)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--workdir", required=True, help="a real_jax.main run directory")
  p.add_argument("--out", required=True, help="output Hugging Face directory")
  p.add_argument("--stage", default="", help="stage to export (default: the run's last)")
  p.add_argument("--best", action="store_true", help="the best-by-eval parameters")
  p.add_argument("--dtype", default=None, help="float32 | bfloat16 (default: param dtype)")
  a = p.parse_args(argv)
  shd.use_cpu_without_accelerator()
  try:
    out = export_run(a.workdir, a.out, stage=a.stage, best=a.best, dtype=a.dtype)
  except FileNotFoundError as e:
    print(f"export_hf: {e}", file=sys.stderr)
    return 1
  print(f"exported to {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
