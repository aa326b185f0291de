"""Robustness of quantized models: noise-trained bases, randomized smoothing (certified radii), incremental
randomized smoothing for quantized models."""
