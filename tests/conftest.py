"""Test setup: 8 fake CPU devices, set before jax is imported anywhere."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


import contextlib  # noqa: E402

import pytest  # noqa: E402


@contextlib.contextmanager
def fast_compiles(cache_dir: str):
  """Lower XLA optimisation effort and a persistent compilation cache, restored afterwards:
  compile time dominates the tiny train steps, and identical computations across tests then
  compile once."""
  old = (jax.config.jax_exec_time_optimization_effort, jax.config.jax_compilation_cache_dir,
         jax.config.jax_persistent_cache_min_compile_time_secs)
  jax.config.update("jax_exec_time_optimization_effort", -1.0)
  if not old[1]:
    jax.config.update("jax_compilation_cache_dir", cache_dir)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
  try:
    yield
  finally:
    jax.config.update("jax_exec_time_optimization_effort", old[0])
    jax.config.update("jax_compilation_cache_dir", old[1])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", old[2])


@pytest.fixture(scope="module")
def fast_compiles_module(tmp_path_factory):
  """Use with `pytestmark = pytest.mark.usefixtures("fast_compiles_module")`."""
  with fast_compiles(str(tmp_path_factory.mktemp("jax_cache"))):
    yield


# Longest files first. `-n 2 --dist loadfile` hands whole files to the two workers; with
# xdist's default reordering (most tests first) the long end-to-end files, which have few tests,
# were handed out last. Turning it off and collecting the files by their measured time
# (`--durations=0`, per-file sums, heaviest first) starts the long files first (xdist hands a
# worker its next file when at most 2 of its tests remain, so the order is approximately
# longest-first); files not named keep their order after these.
LONGEST_FIRST = (  # per-file sums, heaviest first (2026-12-08, 2-core EPYC, beside 2 training runs)
    "test_synthetic_table.py", "test_train.py", "test_plan.py", "test_main.py", "test_lora.py",
    "test_sampling.py", "test_reliability.py", "test_model.py", "test_objectives.py",
    "test_multihost.py", "test_reward_benchmarks.py", "test_multi_token_training.py",
    "test_attention.py", "test_packing.py", "test_pretrain.py", "test_bad_input.py",
    "test_judging.py", "test_cli.py", "test_serve.py", "test_scales.py")


def pytest_configure(config):
  if hasattr(config.option, "loadscopereorder"):  # pytest-xdist
    config.option.loadscopereorder = False


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept


# Session fixtures for the end-to-end runs (tests/test_main.py, tests/test_multihost.py).

from run_helpers import tiny_config  # noqa: E402


@pytest.fixture(scope="session")
def shared(tmp_path_factory):
  return {"data_dir": str(tmp_path_factory.mktemp("tfds")),
          "tok_dir": str(tmp_path_factory.mktemp("tok"))}


@pytest.fixture(scope="session")
def warm(shared, tmp_path_factory):
  """A short SFT run (the sft smoke test): its checkpoint emits the judge format, so the RL and
  TRACT runs of the end-to-end tests see CoTs that reach the delimiter."""
  from real_jax import main as main_lib
  wd = str(tmp_path_factory.mktemp("sft"))
  c = tiny_config(shared, "sft", **{"train.steps": 60, "train.batch_size": 16, "train.lr": 5e-3,
                                    "checkpoint.every": 30, "log.every": 20})
  with fast_compiles(str(tmp_path_factory.mktemp("jax_cache"))):
    summary = main_lib.run(c, wd)
  from real_jax.data import build_synthetic_tokenizer  # share one tokenizer from now on
  build_synthetic_tokenizer(shared["tok_dir"])
  return wd, summary
