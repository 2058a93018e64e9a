"""Attention for jagged action sequences with fused ALiBi position/time bias and candidate mask."""

from genrank_jax.kernels.attention import IMPLEMENTATIONS, attention, default_impl, unavailable_reason
from genrank_jax.kernels.cached import (
    CACHED_IMPLEMENTATIONS,
    cached_attention,
    cached_unavailable_reason,
    default_cached_impl,
)
from genrank_jax.kernels.cached_reference import cached_attention_reference
from genrank_jax.kernels.masking import alibi_slopes, relative_bias, valid_pairs
from genrank_jax.kernels.reference import attention_reference
from genrank_jax.kernels.selection import BackendSelfCheckWarning, backend_report

__all__ = [
    "IMPLEMENTATIONS", "attention", "attention_reference", "default_impl", "unavailable_reason",
    "CACHED_IMPLEMENTATIONS", "cached_attention", "cached_attention_reference", "cached_unavailable_reason",
    "default_cached_impl", "alibi_slopes", "relative_bias", "valid_pairs",
    "backend_report", "BackendSelfCheckWarning",
]
