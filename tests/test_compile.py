"""The paper preset lowers and compiles here without allocating its parameters."""

import pytest

from configs import lm_moe
from moejax.training.compile import compile_train_step


@pytest.mark.slow
def test_paper_preset_train_step_compiles_abstractly():
  config = lm_moe.get_config("paper")
  config.data.batch_size = 1  # shapes only: nothing of the 320M-parameter model is allocated
  timings = compile_train_step(config)
  assert timings["compile_s"] > 0


def test_paper_grid_extremes_lower(tmp_path):
  config = lm_moe.get_config("paper")
  config.model.update(d_model=2048, num_experts=128, top_k=16)
  config.data.update(batch_size=1, seq_len=256)
  assert compile_train_step(config, compile_=False)["lower_s"] > 0
