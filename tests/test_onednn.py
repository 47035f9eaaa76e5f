"""conv_impl='onednn': the oneDNN FFI convolutions against XLA's, under jit, vmap, grad of grad and
bfloat16, and the install without the extension.

The layer-by-layer equality with nn.Conv / nn.ConvTranspose on every shape is in test_layers.py.
"""

import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from ae_jax.models import layers, onednn

ROOT = pathlib.Path(__file__).resolve().parent.parent
DN = ("NHWC", "HWIO", "NHWC")


def _xla_conv(x, w, strides):
  return lax.conv_general_dilated(x, w, strides, "SAME", dimension_numbers=DN)


def _inputs(b=3, h=9, c_in=4, c_out=6, k=3, dtype=jnp.float32):
  x = jax.random.normal(jax.random.key(0), (b, h, h, c_in), dtype)
  w = jax.random.normal(jax.random.key(1), (k, k, c_in, c_out), dtype)
  return x, w


def test_the_extension_loads_and_reports_its_kernels():
  assert onednn.unavailable_reason() is None
  ext = onednn.extension()
  assert ext.version().startswith("3.")
  x, w = _inputs(b=5, h=11, c_in=3, c_out=7)  # a shape no other test of this process uses
  before = ext.cached_primitives()
  f = jax.jit(lambda x, w: onednn.conv_same(x, w, (2, 2)))
  jax.block_until_ready(f(x, w))
  jax.block_until_ready(f(x + 1, w))  # same shape: the cached primitive
  assert ext.cached_primitives() == before + 1
  jax.block_until_ready(jax.jit(lambda x, w: onednn.conv_same(x, w, (1, 1)))(x, w))  # a new geometry
  assert ext.cached_primitives() == before + 2
  # oneDNN names its choice; on x86-64 it is a JIT-compiled kernel, not the reference loop.
  impl = ext.implementation(0, 3, 9, 9, 4, 5, 5, 6, 3, 3, 2, 2, 1, 1, 1, 1, False)
  assert "ref" not in impl, impl


def test_vmap_folds_a_batched_input_and_loops_over_a_batched_kernel():
  x, w = _inputs()
  xs = jnp.stack([x, 2 * x, -x])  # [V, B, H, W, C]
  ws = jnp.stack([w, w[::-1], 0.5 * w])
  conv = lambda x, w: onednn.conv_same(x, w, (2, 2))
  want = jnp.stack([_xla_conv(xs[i], w, (2, 2)) for i in range(3)])
  np.testing.assert_allclose(jax.jit(jax.vmap(conv, (0, None)))(xs, w), want, rtol=1e-5, atol=1e-5)
  want = jnp.stack([_xla_conv(xs[i], ws[i], (2, 2)) for i in range(3)])
  np.testing.assert_allclose(jax.jit(jax.vmap(conv))(xs, ws), want, rtol=1e-5, atol=1e-5)
  # Per-example kernel gradients: vmap of grad, where the kernel gradient's batch cannot fold.
  per_example = jax.vmap(jax.grad(lambda w, x: jnp.sum(jnp.sin(conv(x[None], w)))), (None, 0))
  want = jax.vmap(jax.grad(lambda w, x: jnp.sum(jnp.sin(_xla_conv(x[None], w, (2, 2))))), (None, 0))
  np.testing.assert_allclose(jax.jit(per_example)(w, x), want(w, x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("transpose", [False, True])
def test_gradients_of_gradients_match_xla(transpose):
  """Each op's VJP is made of the other two, so second derivatives (an input-gradient
  penalty, as the contractive objective takes) stay on oneDNN and match XLA."""
  x, w = _inputs()
  if transpose:
    ours = lambda x, w: onednn.conv_transpose_same(x, w, (2, 2))
    ref = lambda x, w: lax.conv_transpose(x, w, (2, 2), "SAME", dimension_numbers=DN)
  else:
    ours, ref = (lambda x, w: onednn.conv_same(x, w, (2, 2))), (lambda x, w: _xla_conv(x, w, (2, 2)))

  def penalty(f):
    def input_grad_norm(w, x):
      gx = jax.grad(lambda x: jnp.sum(jnp.tanh(f(x, w))))(x)
      return jnp.sum(gx**2)
    return jax.jit(jax.grad(input_grad_norm, argnums=(0, 1)))
  for a, b in zip(penalty(ours)(w, x), penalty(ref)(w, x)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(b))))


@pytest.mark.parametrize("transpose", [False, True])
def test_bfloat16_runs_in_bfloat16_and_stays_close_to_float32(transpose):
  x, w = _inputs(c_in=16, c_out=32)
  fn = onednn.conv_transpose_same if transpose else onednn.conv_same
  y16 = jax.jit(lambda x, w: fn(x, w, (2, 2)))(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16))
  y32 = jax.jit(lambda x, w: fn(x, w, (2, 2)))(x, w)
  assert y16.dtype == jnp.bfloat16
  hlo = jax.jit(lambda x, w: fn(x, w, (2, 2))).lower(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)).as_text()
  assert "ae_jax_onednn" in hlo and "bf16" in hlo
  err = float(jnp.max(jnp.abs(y16.astype(jnp.float32) - y32)) / jnp.max(jnp.abs(y32)))
  assert 0 < err < 2e-2  # an 8-bit mantissa: close, not equal
  g16 = jax.jit(jax.grad(lambda w: jnp.sum(fn(x.astype(jnp.bfloat16), w, (2, 2)).astype(jnp.float32))))(
      w.astype(jnp.bfloat16))
  g32 = jax.jit(jax.grad(lambda w: jnp.sum(fn(x, w, (2, 2)))))(w)
  assert g16.dtype == jnp.bfloat16
  assert float(jnp.max(jnp.abs(g16.astype(jnp.float32) - g32)) / jnp.max(jnp.abs(g32))) < 2e-2


def test_a_train_step_with_onednn_convs_cannot_be_exported_for_gpu():
  """A CPU-only kernel must never reach a GPU/TPU program: export refuses the custom call."""
  module = layers.conv("onednn", 8, 3, 2, "c")
  x = jnp.zeros((2, 8, 8, 3))
  params = module.init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="ae_jax_onednn_forward"):
    jax.export.export(jax.jit(module.apply), platforms=["cuda"])(params, x)


def _site_packages() -> str:
  return sysconfig.get_paths()["purelib"]


def test_without_the_extension_auto_keeps_mixed_and_onednn_is_refused_in_one_line(tmp_path):
  """What an install where the extension cannot build gets: CMake skips it and writes why;
  'auto' resolves to 'mixed' and conv_impl='onednn' fails with that reason."""
  build, prefix = tmp_path / "build", tmp_path / "prefix"
  cmake = shutil.which("cmake")
  assert cmake, "cmake is a build requirement of the install"
  subprocess.run([cmake, "-S", str(ROOT), "-B", str(build), "-DAE_JAX_ONEDNN=OFF",
                  f"-DCMAKE_INSTALL_PREFIX={prefix}"], check=True, capture_output=True)
  subprocess.run([cmake, "--install", str(build)], check=True, capture_output=True)
  status = prefix / "ae_jax" / "models" / "_onednn_build.py"
  assert "AE_JAX_ONEDNN=OFF" in status.read_text()
  # The package as such an install lays it out: the sources and that file, no extension.
  pkg = tmp_path / "site" / "ae_jax"
  shutil.copytree(ROOT / "ae_jax", pkg, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
  shutil.copy(status, pkg / "models")
  script = (
      "import jax; from ae_jax.models import layers, onednn; import ae_jax\n"
      f"assert ae_jax.__file__.startswith({str(tmp_path)!r}), ae_jax.__file__\n"
      "print(layers.resolve('auto', 'cpu'))\n"
      "try:\n"
      "  layers.conv('onednn', 4, 3, 2, 'c').init(jax.random.key(0), jax.numpy.zeros((1, 8, 8, 1)))\n"
      "except ValueError as e:\n"
      "  print(e)\n")
  # -S: no site-packages .pth files, so the editable install's finder does not redirect ae_jax.
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), _site_packages()])}
  out = subprocess.run([sys.executable, "-S", "-c", script], env=env, cwd=tmp_path, capture_output=True,
                       text=True)
  assert out.returncode == 0, out.stderr[-2000:]
  resolved, error = out.stdout.strip().splitlines()
  assert resolved == "mixed"
  assert error == ("conv_impl='onednn' is not available: the install did not build the extension (it was "
                   "switched off (AE_JAX_ONEDNN=OFF)); use 'auto', 'mixed' or 'xla'")


def test_onednn_layers_keep_nn_conv_names_when_unnamed():
  x = jnp.zeros((1, 8, 8, 2))

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      return onednn.ConvTranspose(3, (3, 3), (2, 2))(onednn.Conv(4, (3, 3), (2, 2))(x))

  class Ref(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.Conv(4, (3, 3), (2, 2), padding="SAME")(x)
      return nn.ConvTranspose(3, (3, 3), (2, 2), padding="SAME")(x)
  structure = lambda m: jax.tree.structure(m.init(jax.random.key(0), x))
  assert structure(Net()) == structure(Ref())
