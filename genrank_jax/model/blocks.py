"""The two block types; both run `genrank_jax.kernels.attention` with the fused ALiBi biases.

A block is `project` (q, k, v and what `finish` needs) then `finish` (its output from the attention
output); `GenRank.forward` runs the attention between them, the full op or a cached one, so every
path (training, encoding, cached scoring, append) runs the blocks the same way.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from genrank_jax.data.tokens import TokenBatch
from genrank_jax.kernels import alibi_slopes, cached_attention
from genrank_jax.kernels.sharded import attention  # per device block under a mesh
from genrank_jax.model.config import GenRankConfig
from genrank_jax.model.history_variants import ExplicitMask, masked_attention


class RelativeAttention(nnx.Module):
    """Calls the attention op with the batch's jagged layout and parameter-free slopes.

    Holds no parameters: the one place where the attention backend (and later a KV cache) attaches.
    """

    def __init__(self, config: GenRankConfig, kind: str):
        self.kind = kind
        self.impl = config.attention_impl
        self.interpret = config.attention_interpret
        # Python floats, not arrays: static configuration, not module state
        with jax.ensure_compile_time_eval():  # concrete even when built under a trace (sharded init)
            slopes = [float(s) for s in alibi_slopes(config.num_heads, config.alibi_max_bias)]
        self.alibi = tuple(slopes) if config.use_alibi else None
        self.time = tuple(s * config.time_bias_scale for s in slopes) if config.use_time_bias else None

    def __call__(self, q, k, v, batch: TokenBatch, mask: ExplicitMask | None = None):
        """q, k: [B, S, H, D], v: [B, S, H, Dv] -> [B, S, H, Dv].

        mask: the research variants' explicit mask (`genrank_jax.model.history_variants`) instead of the
        op's contract; a plain jnp attention then.
        """
        if mask is not None:
            return masked_attention(
                q, k, v, mask, kind=self.kind,
                alibi_slopes=None if self.alibi is None else jnp.asarray(self.alibi, jnp.float32),
                time_slopes=None if self.time is None else jnp.asarray(self.time, jnp.float32))
        return attention(
            q, k, v, lengths=batch.lengths, num_candidates=batch.num_candidates,
            positions=batch.positions, timestamps=batch.timestamps if self.time is not None else None,
            alibi_slopes=None if self.alibi is None else jnp.asarray(self.alibi, jnp.float32),
            time_slopes=None if self.time is None else jnp.asarray(self.time, jnp.float32), kind=self.kind,
            impl=self.impl, interpret=self.interpret,
        )

    def cached(self, q, k, v, cache_keys, cache_values, *, cache_lengths, num_candidates, positions,
               cache_positions, timestamps, cache_timestamps, normalizer, impl=None):
        """Serving: candidate q, k: [B, M, H, D] against cached history keys/values and themselves.

        `impl` picks the cached op's backend (None: the fastest for the device); the model's
        `attention_interpret` flag carries over.
        """
        return cached_attention(
            q, k, v, cache_keys=cache_keys, cache_values=cache_values, cache_lengths=cache_lengths,
            num_candidates=num_candidates, positions=positions, cache_positions=cache_positions,
            timestamps=timestamps if self.time is not None else None,
            cache_timestamps=cache_timestamps if self.time is not None else None,
            alibi_slopes=None if self.alibi is None else jnp.asarray(self.alibi, jnp.float32),
            time_slopes=None if self.time is None else jnp.asarray(self.time, jnp.float32),
            kind=self.kind, normalizer=normalizer, impl=impl, interpret=self.interpret,
        )


def _heads(x, num_heads):
    return x.reshape(x.shape[:-1] + (num_heads, x.shape[-1] // num_heads))


class TransformerBlock(nnx.Module):
    """Pre-norm softmax multi-head attention + MLP, both residual."""

    def __init__(self, config: GenRankConfig, *, rngs: nnx.Rngs):
        width = config.width
        self.num_heads = config.num_heads
        self.attention_norm = nnx.RMSNorm(width, rngs=rngs)
        self.qkv = nnx.Linear(width, 3 * width, use_bias=False, rngs=rngs)
        self.attention = RelativeAttention(config, "softmax")
        self.out = nnx.Linear(width, width, use_bias=False, rngs=rngs)
        self.mlp_norm = nnx.RMSNorm(width, rngs=rngs)
        self.mlp_in = nnx.Linear(width, config.mlp_ratio * width, rngs=rngs)
        self.mlp_out = nnx.Linear(config.mlp_ratio * width, width, rngs=rngs)

    def project(self, x):
        """(q, k, v [..., H, D], carry) of tokens x [..., W]; serving caches k and v."""
        q, k, v = jnp.split(self.qkv(self.attention_norm(x)), 3, axis=-1)
        heads = lambda t: _heads(t, self.num_heads)
        return heads(q), heads(k), heads(v), None

    def finish(self, x, attended, carry):
        """The block's output from its input x [..., W] and the attention output [..., H, Dv]."""
        x = x + self.out(attended.reshape(x.shape))
        return x + self.mlp_out(jax.nn.gelu(self.mlp_in(self.mlp_norm(x))))


class HSTUBlock(nnx.Module):
    """HSTU: u, v, q, k = split(silu(W x)); A = silu attention; y = W_o(u * norm(A v)) + x."""

    def __init__(self, config: GenRankConfig, *, rngs: nnx.Rngs):
        width = config.width
        self.num_heads = config.num_heads
        self.input_norm = nnx.RMSNorm(width, rngs=rngs)
        self.uvqk = nnx.Linear(width, 4 * width, rngs=rngs)
        self.attention = RelativeAttention(config, "silu")
        self.output_norm = nnx.LayerNorm(width, rngs=rngs)
        self.out = nnx.Linear(width, width, rngs=rngs)

    def project(self, x):
        """(q, k, v [..., H, D], u [..., W]) of tokens x [..., W]; serving caches k and v."""
        u, v, q, k = jnp.split(jax.nn.silu(self.uvqk(self.input_norm(x))), 4, axis=-1)
        heads = lambda t: _heads(t, self.num_heads)
        return heads(q), heads(k), heads(v), u

    def finish(self, x, attended, u):
        return x + self.out(u * self.output_norm(attended.reshape(x.shape)))


BLOCKS = {"transformer": TransformerBlock, "hstu": HSTUBlock}
