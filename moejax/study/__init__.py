"""The reasoning-versus-memorization study of optimal MoE sparsity (Nakamura et al. 2025):
verdicts per finding from a sweep's results table, and the report that states them."""
