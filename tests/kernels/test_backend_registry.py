"""The backend registry and `impl=None`'s self-check, with stand-in backends on the CPU.

The stand-ins are registered for the test and put first in the default platform's preference
list: one computes the reference (passes), one adds 0.1 to it (wrong numbers), one raises (as a
kernel that fails to lower would), one reports itself unavailable. Where a real kernel is needed,
`pallas_triton` runs in the Pallas interpreter behind a wrapper (`Interpreted`).
"""

from __future__ import annotations

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genrank_jax.kernels import (
    CACHED_IMPLEMENTATIONS,
    IMPLEMENTATIONS,
    BackendSelfCheckWarning,
    attention,
    backend_report,
    backends,
    cached_attention,
    cached_unavailable_reason,
    default_impl,
    selection,
    self_check,
    unavailable_reason,
)
from tests.kernels.parity import Case, assert_rows_close, make_inputs

PLATFORM = jax.devices()[0].platform


@dataclasses.dataclass(frozen=True)
class Fake:
    """A stand-in backend: the reference's numbers, wrong ones, an exception, or unavailable."""

    name: str
    behaviour: str = "right"  # "right", "wrong", "raises", "inference_only" (right; its vjp raises)
    op: str = "attention"
    differentiable: bool = True
    unavailable: str | None = None
    sixteen_bit_only: bool = False
    calls: list = dataclasses.field(default_factory=list, compare=False)

    def unavailable_reason(self, interpret: bool) -> str | None:
        return self.unavailable

    def accepts(self, dtype) -> bool:
        return not self.sixteen_bit_only or jnp.dtype(dtype).itemsize == 2

    def __call__(self, q, k, v, *, interpret, block_sizes, **arguments):
        self.calls.append(arguments["kind"])
        if self.behaviour == "raises":
            raise RuntimeError("fake lowering failure on this chip")
        reference = backends.lookup(self.op, backends.REFERENCE)
        out = reference(q, k, v, interpret=interpret, block_sizes=block_sizes, **arguments)
        if self.behaviour == "inference_only":
            return _refuses_gradients(out)
        return out + 0.1 if self.behaviour == "wrong" else out


@jax.custom_vjp
def _refuses_gradients(x):
    return x


def _refuses_gradients_forward(x):
    return x, None


def _refuses_gradients_backward(_, cotangent):
    raise NotImplementedError("inference only")


_refuses_gradients.defvjp(_refuses_gradients_forward, _refuses_gradients_backward)


@dataclasses.dataclass(frozen=True)
class Interpreted:
    """A real backend run in the Pallas interpreter whatever `interpret` the caller passes."""

    inner: backends.Backend
    name: str = "interpreted_pallas_triton"

    @property
    def op(self):
        return self.inner.op

    @property
    def differentiable(self) -> bool:
        return self.inner.differentiable

    def unavailable_reason(self, interpret: bool) -> str | None:
        return self.inner.unavailable_reason(True)

    def accepts(self, dtype) -> bool:
        return True

    def __call__(self, q, k, v, *, interpret, block_sizes, **arguments):
        return self.inner(q, k, v, interpret=True, block_sizes=block_sizes, **arguments)


@pytest.fixture
def stand_ins(monkeypatch):
    """`add(backend)` registers a backend for this test; `prefer(op, *names)` makes them the
    default platform's preference list. Choices made before or during the test are forgotten."""
    added = []

    def add(backend):
        backends.register(backend)
        added.append(backend)
        return backend

    def prefer(op, *names):
        monkeypatch.setitem(backends.PREFERENCES[op], PLATFORM, names)

    selection.forget()
    yield add, prefer
    for backend in added:
        backends.unregister(backend.op, backend.name)
    selection.forget()


@pytest.fixture
def checks(monkeypatch):
    """The backends the self-check ran on, in order."""
    ran = []
    check = self_check.check

    def counting(backend, dtype):
        ran.append(backend.name)
        return check(backend, dtype)

    monkeypatch.setattr(self_check, "check", counting)
    return ran


def _inputs(dtype=jnp.float32):
    q, k, v, arguments, _ = make_inputs(Case(batch=3, seq_len=12, heads=2, head_dim=8, dtype=dtype,
                                             lengths=(12, 1, 7), num_candidates=(3, 1, 0), seed=4))
    return (q, k, v), arguments


def _self_check_warnings(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, BackendSelfCheckWarning)]


def test_the_registry_lists_the_backends_there_were():
    assert IMPLEMENTATIONS == ("xla", "pallas_triton", "pallas_mosaic_gpu", "pallas_tpu")
    assert CACHED_IMPLEMENTATIONS == ("xla", "pallas_triton")
    for op, names in (("attention", IMPLEMENTATIONS), ("cached", CACHED_IMPLEMENTATIONS)):
        assert backends.names(op) == names
        for name in names:
            backend = backends.lookup(op, name)
            assert isinstance(backend, backends.Backend) and (backend.op, backend.name) == (op, name)
    assert not backends.lookup("cached", "pallas_triton").differentiable  # inference only
    mosaic = backends.lookup("attention", "pallas_mosaic_gpu")
    assert mosaic.accepts(jnp.bfloat16) and not mosaic.accepts(jnp.float32)


def test_unknown_names_give_the_messages_they_gave():
    assert unavailable_reason("pallas_nope") == (
        "unknown impl 'pallas_nope'; expected one of "
        "('xla', 'pallas_triton', 'pallas_mosaic_gpu', 'pallas_tpu') or None")
    assert cached_unavailable_reason("pallas_tpu") == (
        "the cached attention op has no backend 'pallas_tpu'; expected one of ('xla', 'pallas_triton') or None")
    (q, k, v), arguments = _inputs()
    with pytest.raises(NotImplementedError, match="unknown impl 'pallas_nope'"):
        attention(q, k, v, **arguments, impl="pallas_nope")


def test_registering_twice_or_a_non_backend_is_refused(stand_ins):
    add, _ = stand_ins
    add(Fake("fake_once"))
    with pytest.raises(ValueError, match="already has a backend named 'fake_once'"):
        backends.register(Fake("fake_once"))
    with pytest.raises(TypeError, match="Backend interface"):
        backends.register(object())


@pytest.mark.skipif(PLATFORM != "cpu", reason="the CPU's default: on a CPU only")
def test_on_a_cpu_impl_none_is_the_reference_and_nothing_is_checked(stand_ins, checks):
    (q, k, v), arguments = _inputs()
    attention(q, k, v, **arguments)
    assert default_impl(jnp.bfloat16) == "xla" and checks == []
    report = backend_report()
    assert [(s.op, s.dtype, s.chosen, s.outcomes) for s in report.selections] == [
        ("attention", "float32", "xla", ()), ("attention", "bfloat16", "xla", ())]
    assert "nothing was checked" in str(report)


@pytest.mark.parametrize("behaviour, failure", [
    ("raises", "raised RuntimeError: fake lowering failure on this chip"),
    ("wrong", "softmax: forward differs from the reference by"),
])
def test_a_failing_preference_falls_back_with_one_warning(stand_ins, checks, behaviour, failure):
    add, prefer = stand_ins
    add(Fake("fake_broken", behaviour))
    good = add(Fake("fake_good"))
    prefer("attention", "fake_broken", "fake_good")
    (q, k, v), arguments = _inputs()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        out = attention(q, k, v, **arguments)
        attention(q, k, v, **arguments)
        assert default_impl(jnp.float32) == "fake_good"
    messages = _self_check_warnings(record)
    assert len(messages) == 1, messages
    assert "fake_broken failed its self-check" in messages[0] and failure in messages[0]
    assert "impl=None uses fake_good instead" in messages[0]
    assert checks == ["fake_broken", "fake_good"]
    np.testing.assert_array_equal(np.asarray(out), np.asarray(attention(q, k, v, **arguments, impl="xla")))
    assert good.calls == [*self_check.KINDS, "softmax", "softmax"]  # its check, then the two calls
    (chosen,) = backend_report().selections
    assert chosen.chosen == "fake_good"
    assert [(o.backend, o.verdict) for o in chosen.outcomes] == [("fake_broken", "failed"), ("fake_good", "passed")]
    assert failure in chosen.outcomes[0].detail and failure in str(backend_report())


def test_when_every_preference_fails_the_reference_is_used(stand_ins):
    add, prefer = stand_ins
    add(Fake("fake_raises", "raises"))
    add(Fake("fake_wrong", "wrong"))
    prefer("attention", "fake_raises", "fake_wrong")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert default_impl(jnp.float32) == "xla"
    (message,) = _self_check_warnings(record)
    assert "fake_raises failed" in message and "fake_wrong failed" in message and "uses xla instead" in message


def test_a_passing_backend_is_checked_once_eagerly_even_when_first_reached_under_jit(stand_ins, checks):
    add, prefer = stand_ins
    good = add(Fake("fake_good"))
    prefer("attention", "fake_good")
    (q, k, v), arguments = _inputs()
    loss = lambda q: jnp.sum(attention(q, k, v, **arguments) ** 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a passing check warns of nothing
        # The first impl=None is resolved while tracing; the check compares concrete numbers, so
        # passing it shows it ran eagerly.
        jax.jit(loss)(q)
    assert good.calls == [*self_check.KINDS, "softmax"]  # its check, then the traced use
    jax.grad(loss)(q)
    shared = {name: arguments[name] for name in ("alibi_slopes", "time_slopes")}
    per_sample = {name: value for name, value in arguments.items() if name not in shared}
    one_sample = lambda q, k, v, per_sample: attention(
        q[None], k[None], v[None], **{name: value[None] for name, value in per_sample.items()}, **shared)[0]
    jax.vmap(one_sample)(q, k, v, per_sample)
    assert default_impl(jnp.float32) == "fake_good" and checks == ["fake_good"]


def test_the_check_runs_once_per_dtype_and_skips_what_a_backend_does_not_take(stand_ins, checks):
    add, prefer = stand_ins
    add(Fake("fake_16_bit", sixteen_bit_only=True))
    add(Fake("fake_good"))
    add(Fake("fake_absent", unavailable="fake_absent needs a chip this machine lacks"))
    prefer("attention", "fake_absent", "fake_16_bit", "fake_good")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # unavailable and skipped backends are expected: no warning
        assert default_impl(jnp.bfloat16) == "fake_16_bit"
        assert default_impl(jnp.float32) == "fake_good"
        assert default_impl(jnp.bfloat16) == "fake_16_bit"
    assert checks == ["fake_16_bit", "fake_good"]
    report = {s.dtype: s for s in backend_report().selections}
    assert [(o.backend, o.verdict) for o in report["float32"].outcomes] == [
        ("fake_absent", "unavailable"), ("fake_16_bit", "skipped"), ("fake_good", "passed")]
    assert "needs a chip this machine lacks" in report["float32"].outcomes[0].detail
    assert "takes no float32 inputs" in report["float32"].outcomes[1].detail


def test_a_named_backend_is_never_checked_or_replaced(stand_ins, checks):
    add, prefer = stand_ins
    add(Fake("fake_wrong", "wrong"))
    add(Fake("fake_raises", "raises"))
    add(Fake("fake_absent", unavailable="fake_absent needs a chip this machine lacks"))
    prefer("attention", "fake_raises")
    (q, k, v), arguments = _inputs()
    want = np.asarray(attention(q, k, v, **arguments, impl="xla"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = np.asarray(attention(q, k, v, **arguments, impl="fake_wrong"))
        np.testing.assert_allclose(got - want, 0.1, atol=1e-6)  # its own numbers, not the reference's
        with pytest.raises(RuntimeError, match="fake lowering failure"):
            attention(q, k, v, **arguments, impl="fake_raises")
        with pytest.raises(NotImplementedError, match="needs a chip this machine lacks"):
            attention(q, k, v, **arguments, impl="fake_absent")
    assert checks == [] and backend_report().selections == ()


def test_the_cached_op_falls_back_too_checking_an_inference_only_backend_forward_only(stand_ins, checks):
    add, prefer = stand_ins
    add(Fake("fake_cached_wrong", "wrong", op="cached", differentiable=False))
    inference = add(Fake("fake_cached_inference", "inference_only", op="cached", differentiable=False))
    prefer("cached", "fake_cached_wrong", "fake_cached_inference")
    rng = np.random.default_rng(5)
    normal = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
    q, k, v = (normal(2, 3, 2, 8) for _ in range(3))
    cache_k, cache_v = (normal(2, 6, 2, 8) for _ in range(2))
    call = lambda impl: cached_attention(q, k, v, cache_keys=cache_k, cache_values=cache_v,
                                         cache_lengths=jnp.array([6, 1], jnp.int32), impl=impl)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        got = call(None)
    (message,) = _self_check_warnings(record)
    assert "cached op" in message and "fake_cached_wrong failed its self-check" in message
    assert "uses fake_cached_inference instead" in message  # its check never asked for a gradient
    assert inference.calls == [*self_check.KINDS, "softmax"]
    np.testing.assert_array_equal(np.asarray(got), np.asarray(call("xla")))
    assert checks == ["fake_cached_wrong", "fake_cached_inference"]


def test_a_real_kernel_passes_the_check_and_is_chosen_under_jit(stand_ins):
    """The fallback target is the Triton kernels in the interpreter, reached under jit and grad."""
    add, prefer = stand_ins
    add(Fake("fake_raises", "raises"))
    add(Interpreted(backends.lookup("attention", "pallas_triton")))
    prefer("attention", "fake_raises", "interpreted_pallas_triton")
    (q, k, v), arguments = _inputs(jnp.bfloat16)
    loss = lambda q, impl: jnp.sum(attention(q, k, v, **arguments, impl=impl).astype(jnp.float32) ** 2)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        value, grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)(q, None)
    (message,) = _self_check_warnings(record)
    assert "fake_raises failed" in message and "uses interpreted_pallas_triton instead" in message
    (chosen,) = backend_report().selections
    assert (chosen.dtype, chosen.chosen) == ("bfloat16", "interpreted_pallas_triton")
    want_value, want_grad = jax.value_and_grad(loss)(q, "xla")
    np.testing.assert_allclose(float(value), float(want_value), rtol=2e-2)
    assert_rows_close(np.asarray(grad, np.float32), np.asarray(want_grad, np.float32), 4e-2, "dq")


def test_backend_report_prints_when_asked(stand_ins, capsys):
    report = backend_report(show=True)
    assert report.selections == () and "no impl=None choice made yet" in capsys.readouterr().out
