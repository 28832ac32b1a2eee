"""The shared ``--config`` flag (ml_collections config_flags over absl)."""

from ml_collections import config_flags

CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file and preset, e.g. configs/lm_moe.py:tiny", lock_config=True)
