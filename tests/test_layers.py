"""Fast conv layers: the same params as nn.Conv / nn.ConvTranspose, the same outputs and gradients."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ae_jax import models
from ae_jax.models import layers, onednn
import oracle

# (H, W, C_in, C_out, kernel, stride): the reference model's layers, then odd shapes.
SHAPES = [(28, 28, 1, 32, 3, 2), (14, 14, 32, 64, 3, 2), (7, 7, 64, 64, 3, 2), (14, 14, 64, 32, 3, 2),
          (28, 28, 32, 1, 3, 1), (9, 10, 3, 5, 3, 2), (8, 8, 4, 6, 4, 2), (5, 7, 2, 3, 5, 3),
          (6, 6, 2, 3, 1, 2), (6, 7, 3, 1, 4, 1)]


def _max_rel(a, b) -> float:
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))) / (np.max(np.abs(np.asarray(x))) + 1e-12))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _check_same(ref: nn.Module, fast: nn.Module, x):
  p_ref, p_fast = ref.init(jax.random.key(0), x), fast.init(jax.random.key(0), x)
  jax.tree.map(np.testing.assert_array_equal, p_ref, p_fast)  # same names, shapes, init values
  # Perturb the zero bias so the test sees it.
  p = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(1), a.shape), p_ref)
  y_ref, y_fast = jax.jit(ref.apply)(p, x), jax.jit(fast.apply)(p, x)
  assert y_ref.shape == y_fast.shape
  assert _max_rel(y_ref, y_fast) < 1e-5

  def loss(m):
    return lambda p, x: jnp.sum(jnp.sin(3.0 * m.apply(p, x)))
  g_ref = jax.jit(jax.grad(loss(ref), argnums=(0, 1)))(p, x)
  g_fast = jax.jit(jax.grad(loss(fast), argnums=(0, 1)))(p, x)
  assert _max_rel(g_ref, g_fast) < 1e-5


@pytest.mark.parametrize("impl", [layers.Conv, onednn.Conv])
@pytest.mark.parametrize("h,w,cin,cout,k,s", SHAPES)
def test_conv_matches_nn_conv(impl, h, w, cin, cout, k, s):
  x = jax.random.uniform(jax.random.key(2), (2, h, w, cin))
  _check_same(nn.Conv(cout, (k, k), strides=s, padding="SAME"), impl(cout, (k, k), strides=(s, s)), x)


@pytest.mark.parametrize("impl", [layers.ConvTranspose, layers.SubpixelConvTranspose, onednn.ConvTranspose])
@pytest.mark.parametrize("h,w,cin,cout,k,s", SHAPES)
def test_conv_transpose_matches_nn_conv_transpose(impl, h, w, cin, cout, k, s):
  x = jax.random.uniform(jax.random.key(2), (2, h, w, cin))
  _check_same(nn.ConvTranspose(cout, (k, k), strides=(s, s), padding="SAME"),
              impl(cout, (k, k), strides=(s, s)), x)


# 'mixed' (a custom_vjp) only serves strided transposed convs: the reference's two, then odd ones.
@pytest.mark.parametrize("h,w,cin,cout,k,s", [s for s in SHAPES[2:] if s[-1] > 1])
def test_mixed_conv_transpose_matches_nn_conv_transpose(h, w, cin, cout, k, s):
  x = jax.random.uniform(jax.random.key(2), (2, h, w, cin))
  _check_same(nn.ConvTranspose(cout, (k, k), strides=(s, s), padding="SAME"),
              layers.SubpixelConvTranspose(cout, (k, k), strides=s, mixed=True), x)


@pytest.mark.parametrize("impl", ["subpixel", "matmul", "mixed", "onednn"])
def test_autoencoder_impls_load_the_same_params_and_agree(impl):
  x = jax.random.uniform(jax.random.key(3), (4, 28, 28, 1))
  ref, fast = oracle.reference(conv_impl="xla"), oracle.reference(conv_impl=impl)
  params = models.init_params(ref, jax.random.key(0))
  jax.tree.map(np.testing.assert_array_equal, params, models.init_params(fast, jax.random.key(0)))

  def loss(m):
    return lambda p: jnp.mean((m.apply({"params": p}, x) - x) ** 2)
  variables = {"params": params}
  assert _max_rel(jax.jit(ref.apply)(variables, x), jax.jit(fast.apply)(variables, x)) < 1e-5
  grads = [jax.jit(jax.grad(loss(m)))(params) for m in (ref, fast)]
  assert _max_rel(*grads) < 1e-5


def test_auto_resolves_per_backend():
  assert layers.resolve("auto", "cpu") == "onednn"  # the install built the extension
  assert layers.resolve("auto", "gpu") == layers.resolve("auto", "tpu") == "xla"
  assert layers.resolve("matmul", "cpu") == "matmul"
  with pytest.raises(ValueError, match=r"conv_impl='winograd': expected one of"):
    models.init_params(oracle.reference(conv_impl="winograd"), jax.random.key(0))


def test_bfloat16_compute_keeps_float32_params_and_outputs():
  x = jax.random.uniform(jax.random.key(3), (4, 28, 28, 1))
  # subpixel: its convs are all conv_general_dilated at the jaxpr's top level
  f32 = oracle.reference(conv_impl="subpixel")
  bf16 = oracle.reference(conv_impl="subpixel", dtype="bfloat16")
  params = models.init_params(bf16, jax.random.key(0))
  assert {p.dtype for p in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
  y16, y32 = oracle.apply(bf16, params, x), oracle.apply(f32, params, x)
  assert y16.dtype == jnp.float32 and oracle.apply(bf16, params, x, "encode").dtype == jnp.float32
  # bfloat16 has an 8-bit mantissa: close, but not equal.
  err = float(jnp.max(jnp.abs(y16 - y32)))
  assert 0 < err < 2e-2
  # The convs compute in bfloat16, except the 1-channel output conv (float32 logits).
  eqns = jax.make_jaxpr(lambda p: bf16.apply({"params": p}, x, method="logits"))(params).eqns
  convs = [e for e in eqns if e.primitive.name == "conv_general_dilated"]
  in_dtypes = [e.invars[0].aval.dtype for e in convs]
  assert in_dtypes[:-1] and set(in_dtypes[:-1]) == {jnp.dtype(jnp.bfloat16)}, in_dtypes
  assert in_dtypes[-1] == jnp.float32
