"""Post-training of finished runs (finding 6 of docs/optimal_sparsity.md).

Modules, one job each:
  grpo   group-relative policy optimisation (Shao et al. 2024) on token prompts and a reward
  study  GRPO of a sweep's runs on the reasoning suite, evaluated like pre-training (grpo.json)
"""
