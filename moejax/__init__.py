"""moejax: sparsity scaling research on Mixture-of-Experts models in JAX/Flax NNX."""
