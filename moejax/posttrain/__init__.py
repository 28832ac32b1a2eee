"""Post-training of finished runs (RESEARCH.md section 1, finding 6).

Modules, one job each:
  grpo   group-relative policy optimisation (Shao et al. 2024) on token prompts and a reward
  study  GRPO of a sweep's runs on the reasoning suite, evaluated like pre-training (grpo.json)
"""
