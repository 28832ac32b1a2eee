"""The paper preset lowers and compiles here without allocating its parameters, and the lowered
program does not grow with depth (layers are scanned)."""

import pytest

from configs import lm_moe
from moejax import counting
from moejax.training.compile import compile_train_step


@pytest.mark.slow
def test_paper_preset_train_step_compiles_abstractly():
  config = lm_moe.get_config("paper")
  config.data.batch_size = 1  # shapes only: nothing of the 320M-parameter model is allocated
  result = compile_train_step(config)
  total, _ = counting.count_params(config.model)
  # The executable takes the whole train state: float32 parameters and two Adam moments.
  assert result["argument_bytes"] >= 3 * 4 * total


def test_paper_grid_extremes_lower():
  config = lm_moe.get_config("paper")
  config.model.update(d_model=2048, moe=dict(num_experts=128, top_k=16))
  config.data.update(batch_size=1, seq_len=256)
  text = compile_train_step(config, compile_=False)["hlo_text"]
  assert "16x128x2048x4096xf32" in text  # the stacked experts: [layers, E, D, F]


def test_lowered_program_is_flat_in_depth():
  lines = {}
  for depth in (2, 8):
    config = lm_moe.get_config("smoke")
    config.model.num_layers = depth
    lines[depth] = len(compile_train_step(config, compile_=False)["hlo_text"].splitlines())
  assert lines[2] == lines[8], lines
