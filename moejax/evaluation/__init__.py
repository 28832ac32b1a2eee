"""Evaluation of language models on the suites (docs/optimal_sparsity.md, "Evaluation").

  from moejax.evaluation import evaluate_suites
  row = evaluate_suites(model, tok, "tiny", data_dir=DIR, max_items=200, sc_samples=8)

Modules, one job each:
  model_io       what counts as a model (nnx.Module, TrainState + graphdef, (graphdef, *states))
  batching       item token ids ([PAD] + prompt, answer + EOS), length buckets, padding
  decoding       jitted batched generation with a KV cache (greedy or sampled), per-item keys
  likelihood     teacher-forced answer log-likelihood; task loss
  metrics        pass@k, majority vote, knowledge bits (Allen-Zhu & Li 2024)
  tasks          accuracy, self_consistency, task_loss, knowledge on a list of items
  suite_metrics  evaluate_suites: all of it as one flat dict of metrics
"""

from moejax.evaluation.suite_metrics import evaluate_suites
from moejax.evaluation.tasks import accuracy, knowledge, self_consistency, task_loss

__all__ = ["evaluate_suites", "accuracy", "knowledge", "self_consistency", "task_loss"]
