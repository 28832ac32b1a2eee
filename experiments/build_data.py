r"""Builds the procedurally generated suites of a preset into a data_dir (offline).

  python -m experiments.build_data --preset=tiny --data_dir=/tmp/moejax_data
  python -m experiments.build_data --preset=tiny --data_dir=/tmp/moejax_data --describe

Builds the SentencePiece tokenizer, the tfds datasets, the seqio token cache and the manifest
(see moejax/data/build.py); an existing valid build is reused unless ``--force``. With
``--describe`` stdout is exactly one JSON line: per task its name, split sizes, token
counts and a SHA-256 over its examples.
"""

import contextlib
import json
import sys

from absl import app
from absl import flags

from moejax.data import build
from moejax.data import presets

_PRESET = flags.DEFINE_enum("preset", "tiny", sorted(presets.PRESETS), "Data preset.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Where to build the data.", required=True)
_DESCRIBE = flags.DEFINE_bool("describe", False, "Print one JSON line describing the build.")
_FORCE = flags.DEFINE_bool("force", False, "Rebuild even if a valid build exists.")


def main(argv):
  del argv
  with contextlib.redirect_stdout(sys.stderr):  # tfds prints progress; stdout is the JSON line
    manifest = build.build(_DATA_DIR.value, _PRESET.value, force=_FORCE.value)
  if _DESCRIBE.value:
    print(json.dumps(build.describe(manifest), sort_keys=True), flush=True)


if __name__ == "__main__":
  app.run(main)
