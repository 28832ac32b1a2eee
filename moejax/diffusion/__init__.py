"""Diffusion: noise schedules and training objectives, samplers with classifier-free guidance,
the diffusion batch source, and the in-repo Frechet distance (DiT-MoE, moejax/models/dit.py)."""
