"""Bad configs fail fast, name the field, and leave an existing workdir untouched."""

import pytest

from configs import lm_moe
from moejax import validation
from tests.conftest import run_module


@pytest.mark.parametrize("field,value,message", [
    ("model.moe.top_k", 8, "config.model.moe.top_k=8 must be in"),
    ("model.num_heads", 3, "config.model.num_heads=3 does not divide config.model.d_model=32"),
    ("model.num_kv_heads", 3, "config.model.num_kv_heads=3 does not divide"),
    ("model.moe_every", 3, "config.model.moe_every=3 does not divide"),
    ("model.moe.dispatch", "magic", "config.model.moe.dispatch='magic'"),
    ("model.dtype", "float8", "config.model.dtype='float8'"),
    ("data.batch_size", 6, "config.data.batch_size=6 is not divisible"),
    ("mesh.data", 3, "config.mesh="),
])
def test_invalid_fields_are_named(field, value, message):
  config = lm_moe.get_config("smoke")
  config.update_from_flattened_dict({field: value})
  with pytest.raises(validation.ConfigError, match=message.replace("(", r"\(")):
    validation.validate_run(config, num_devices=4 if field == "data.batch_size" else 1)


def test_mesh_must_use_all_devices():
  config = lm_moe.get_config("smoke")
  config.mesh.update(data=2, fsdp=2)
  with pytest.raises(validation.ConfigError, match="has 4 devices, but 8 are available"):
    validation.validate_run(config, num_devices=8)
  assert validation.validate_run(config, num_devices=4) == {"data": 2, "fsdp": 2, "expert": 1,
                                                            "tensor": 1}


def _existing_workdir(tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "config.json").write_text('{"keep": "me"}')
  return workdir


@pytest.mark.parametrize("args,message", [
    (["--config=configs/lm_moe.py:smoke", "--config.model.moe.top_k=9"],
     "config.model.moe.top_k=9"),
    (["--config=configs/lm_moe.py:gigantic"], "unknown preset 'gigantic'"),
    (["--config=configs/lm_moe.py:smoke", "--config.model.nonexistent=1"], "nonexistent"),
    (["--config=configs/lm_moe.py:smoke", "--config.data.batch_size=7",
      "--config.mesh.data=2"], "config.mesh="),
])
def test_cli_errors_before_touching_workdir(tmp_path, args, message):
  workdir = _existing_workdir(tmp_path)
  proc = run_module("experiments.train", *args, f"--workdir={workdir}", check=False)
  assert proc.returncode != 0
  assert message in proc.stderr, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  assert sorted(p.name for p in workdir.iterdir()) == ["config.json"]
  assert (workdir / "config.json").read_text() == '{"keep": "me"}'
