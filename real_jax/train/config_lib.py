"""The config of `python -m real_jax.main`, as one import: configs and tools read it from here.

It is split by job:
  config_schema  every field with its default and meaning, CHOICES and RANGES, reading configs
                 (`load_config`, `parse_arg`, `set_field`), `--help` / `--print_config` text
  validation     the checks that run before anything is built (`validate`)
  settings       the run's settings resolved once (`resolve` -> `RunSettings`: method entry,
                 stages, evaluations, RL settings), the model a config describes, exactness
  methods        the method table (`METHODS`, `stages_for`)
"""

from real_jax.train.config_schema import (CHOICES, INVALID_RULES, RANGES, ConfigDict, ConfigError,
                                          assign, base_config, describe, field_docs, flatten,
                                          get_field, load_config, parse_arg, parse_bool,
                                          set_field, with_defaults)
from real_jax.train.methods import METHODS, stages_for
from real_jax.train.settings import (EXACT_OVERRIDES, attention_backend, exactness_gaps,
                                     lora_fields, model_overrides, preset_model, resolve,
                                     rl_settings)
from real_jax.train.validation import batch_axes_size, check_fields, check_ranges, validate

__all__ = ["CHOICES", "INVALID_RULES", "RANGES", "ConfigDict", "ConfigError", "base_config",
           "describe", "field_docs", "flatten", "get_field", "assign", "load_config", "parse_arg",
           "parse_bool", "set_field", "METHODS", "stages_for", "EXACT_OVERRIDES",
           "attention_backend", "exactness_gaps", "lora_fields", "model_overrides", "preset_model", "resolve", "rl_settings",
           "batch_axes_size", "check_fields", "check_ranges", "validate", "with_defaults"]
