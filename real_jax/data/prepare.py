"""Prepare judge datasets once and print their validation reports.

  python -m real_jax.data.prepare --data_dir ~/tensorflow_datasets --manual_dir ~/prometheus_data \
      --datasets feedback_collection,feedback_bench,flask,vicuna_bench,mt_bench
  python -m real_jax.data.prepare --data_dir data/tfds --datasets synthetic --option label_noise=0.1

Run it once before a multi-process job (processes must not prepare the same data_dir at once).
`--option key=value` sets builder config options (ints, floats, booleans, None and strings).
"""
from __future__ import annotations

import argparse
import ast
import json

from real_jax.data.loading import DATASETS, DEFAULT_SPLIT, get_builder, load_split

__all__ = ["main"]


def _parse_value(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--data_dir", required=True)
  parser.add_argument("--manual_dir", default=None)
  parser.add_argument("--datasets", default="synthetic",
                      help=f"comma-separated, from {sorted(DATASETS)}")
  parser.add_argument("--output_format", default="score_phrase", choices=["score_phrase", "result"])
  parser.add_argument("--option", action="append", default=[], help="builder option key=value")
  args = parser.parse_args(argv)
  options = {}
  for item in args.option:
    key, _, value = item.partition("=")
    options[key] = _parse_value(value)
  for name in [n.strip() for n in args.datasets.split(",") if n.strip()]:
    src = load_split(name, DEFAULT_SPLIT[name], data_dir=args.data_dir, manual_dir=args.manual_dir,
                     output_format=args.output_format, **options)
    builder = get_builder(name, data_dir=args.data_dir, output_format=args.output_format, **options)
    print(f"{name}: {builder.data_dir}")
    print(json.dumps(dict(builder.info.metadata.get("validation", {})), indent=1))
    del src


if __name__ == "__main__":
  main()
