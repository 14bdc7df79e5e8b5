"""Judge datasets (TFDS builders for the real data and the synthetic task) and batching.

  from real_jax.data import load_split
  src = load_split("synthetic", "train", data_dir="data/tfds")   # random access, common schema
  from real_jax.data import batching                              # tokenise, bucket, shuffle, resume

Submodules: records (schema, validation, readers), tfds_base, builders (real datasets),
synthetic (task, tokenizer, builder), loading (load_split), batching. `batching` imports jax and is
not imported here.
"""
from real_jax.data.loading import DATASETS, EVAL_BENCHMARKS, JudgeSource, get_builder, load_split
from real_jax.data.records import REASONS, InvalidRowError
from real_jax.data.synthetic import SyntheticConfig, build_synthetic_tokenizer

__all__ = ["DATASETS", "EVAL_BENCHMARKS", "JudgeSource", "get_builder", "load_split", "REASONS",
           "InvalidRowError", "SyntheticConfig", "build_synthetic_tokenizer"]
