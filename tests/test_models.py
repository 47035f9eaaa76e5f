"""Model structure: Keras parameter counts, shapes under jit and no-jit, configurability."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ae_jax import config as config_lib
from ae_jax import models


def test_reference_param_counts_equal_keras():
  params = models.init_params(models.Autoencoder(), jax.random.key(0))
  # Keras model.summary() of the reference encoder/decoder.
  assert models.count_params(params["encoder"]) == 69_008
  assert models.count_params(params["decoder"]) == 108_993
  assert models.count_params(params) == 178_001


def test_default_config_builds_reference_model():
  model = models.from_config(config_lib.get_default(), (28, 28, 1))
  assert model == models.Autoencoder()


class ShapesTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_shapes_and_ranges(self):
    model = models.Autoencoder()
    params = models.init_params(model, jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (5, 28, 28, 1))
    out = self.variant(lambda p, x: model.apply({"params": p}, x))(params, x)
    z = self.variant(lambda p, x: model.apply({"params": p}, x, method="encode"))(params, x)
    logits = self.variant(lambda p, x: model.apply({"params": p}, x, method="logits"))(params, x)
    chex.assert_shape(out, (5, 28, 28, 1))
    chex.assert_shape(z, (5, 16))
    chex.assert_shape(logits, (5, 28, 28, 1))
    chex.assert_tree_all_finite((out, z, logits))
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    np.testing.assert_allclose(out, jax.nn.sigmoid(logits), rtol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_encoder_and_decoder_stand_alone(self):
    model = models.Autoencoder()
    params = models.init_params(model, jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (3, 28, 28, 1))
    z = self.variant(lambda p, x: models.Encoder().apply({"params": p}, x))(params["encoder"], x)
    y = self.variant(lambda p, z: models.Decoder().apply({"params": p}, z))(params["decoder"], z)
    np.testing.assert_allclose(y, model.apply({"params": params}, x), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(
        model.apply({"params": params}, z, method="decode"), y, rtol=1e-6, atol=1e-7)

  @chex.variants(with_jit=True, without_jit=True)
  def test_configurable_levels_shape_and_logits(self):
    model = models.Autoencoder(image_shape=(32, 32, 3), filters=(8, 16, 32), kernel_size=5,
                               latent_dim=7, output="logits")
    params = models.init_params(model, jax.random.key(0))
    x = jnp.ones((2, 32, 32, 3))
    out = self.variant(lambda p, x: model.apply({"params": p}, x))(params, x)
    chex.assert_shape(out, (2, 32, 32, 3))
    np.testing.assert_array_equal(out, model.apply({"params": params}, x, method="logits"))
    assert params["decoder"]["project"]["kernel"].shape == (7, 4 * 4 * 32)
    assert params["encoder"]["conv2"]["kernel"].shape == (5, 5, 16, 32)


def test_image_shape_must_divide_by_levels():
  with pytest.raises(ValueError, match=r"divisible by 2\*\*levels=8 for 3 stride-2 levels; set "
                                       r"model.pad=True to pad the input to \(32, 32, 1\)"):
    models.check_image_shape((28, 28, 1), 3)
  with pytest.raises(ValueError, match="divisible"):
    models.init_params(models.Autoencoder(image_shape=(30, 28, 1)), jax.random.key(0))


def test_unknown_output_is_refused():
  with pytest.raises(ValueError, match="output='softmax'"):
    models.init_params(models.Autoencoder(output="softmax"), jax.random.key(0))


def test_pad_runs_sizes_the_levels_do_not_divide():
  model = models.Autoencoder(image_shape=(28, 27, 1), filters=(4, 8, 8), latent_dim=3, pad=True)
  params = models.init_params(model, jax.random.key(0))
  x = jax.random.uniform(jax.random.key(1), (2, 28, 27, 1))
  chex.assert_shape(model.apply({"params": params}, x), (2, 28, 27, 1))
  # The same as padding by hand (rows 2 + 2, columns 2 + 3) and cropping the decoder's 32x32 output.
  x_pad = np.pad(np.asarray(x), ((0, 0), (2, 2), (2, 3), (0, 0)))
  z = model.apply({"params": params}, x, method="encode")
  inner = models.Autoencoder(image_shape=(32, 32, 1), filters=(4, 8, 8), latent_dim=3)
  np.testing.assert_allclose(z, inner.apply({"params": params}, x_pad, method="encode"), rtol=1e-6)
  full = inner.apply({"params": params}, x_pad, method="logits")
  np.testing.assert_allclose(model.apply({"params": params}, x, method="logits"),
                             full[:, 2:30, 2:29], rtol=1e-6)
  assert params["decoder"]["project"]["kernel"].shape == (3, 4 * 4 * 8)
