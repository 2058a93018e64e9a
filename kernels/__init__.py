"""Attention for jagged action sequences with fused ALiBi position/time bias and candidate mask."""

from genrank_jax.kernels.attention import IMPLEMENTATIONS, attention, default_impl, unavailable_reason
from genrank_jax.kernels.masking import alibi_slopes, relative_bias, valid_pairs
from genrank_jax.kernels.reference import attention_reference

__all__ = [
    "IMPLEMENTATIONS", "attention", "attention_reference", "default_impl", "unavailable_reason",
    "alibi_slopes", "relative_bias", "valid_pairs",
]
