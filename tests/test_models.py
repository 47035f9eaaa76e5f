"""Architectures and heads: Keras parameter counts, shapes under jit and no-jit, padding, registration."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ae_jax import config as config_lib
from ae_jax import fields, models, train
import oracle


def test_reference_param_counts_equal_keras():
  params = models.init_params(oracle.reference(), jax.random.key(0))
  # Keras model.summary() of the reference encoder/decoder.
  assert models.count_params(params["encoder"]) == 69_008
  assert models.count_params(params["decoder"]) == 108_993
  assert models.count_params(params) == 178_001
  assert sorted(params["encoder"]) == ["conv0", "conv1", "latent"]
  assert sorted(params["decoder"]) == ["deconv0", "deconv1", "project", "to_pixels"]


def test_the_objective_picks_the_head_and_nothing_else():
  c = config_lib.get_default()
  for objective, head, extra in (("ae", "dense", []), ("vae", "gaussian", []),
                                 ("vqvae", "grid", ["codebook"])):
    c.objective = objective
    model = train.build_model(c, (28, 28, 1))
    assert model.latent == head
    params = models.init_params(model, jax.random.key(0))
    assert sorted(params) == sorted(["encoder", "decoder", *extra])
  c.objective, c.vae.likelihood = "vae", "gaussian"  # a learned scale: one more param
  assert models.init_params(train.build_model(c, (28, 28, 1)), jax.random.key(0))["log_scale"].shape == ()
  # The same config.model and head build the same model, whatever else the config says.
  other = config_lib.get_default()
  other.learning_rate, other.noise.kind = 0.1, "gaussian"
  assert models.build(other.model, (28, 28, 1)) == models.build(config_lib.get_default().model, (28, 28, 1))


class ShapesTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_shapes_and_ranges(self):
    model = oracle.reference()
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
    model = oracle.reference()
    params = models.init_params(model, jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (3, 28, 28, 1))
    z = self.variant(lambda p, x: model.encoder.apply({"params": p}, x))(params["encoder"], x)
    y = self.variant(lambda p, z: model.decoder.apply({"params": p}, z))(params["decoder"], z)
    np.testing.assert_allclose(jax.nn.sigmoid(y), oracle.apply(model, params, x), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(oracle.apply(model, params, z, "decode_logits"), y, rtol=1e-6,
                               atol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_configurable_levels_shape_and_logits(self):
    model = oracle.reference((32, 32, 3), filters=(8, 16, 32), kernel_size=5, latent_dim=7, output="logits")
    params = models.init_params(model, jax.random.key(0))
    x = jnp.ones((2, 32, 32, 3))
    out = self.variant(lambda p, x: model.apply({"params": p}, x))(params, x)
    chex.assert_shape(out, (2, 32, 32, 3))
    np.testing.assert_array_equal(out, oracle.apply(model, params, x, "logits"))
    assert params["decoder"]["project"]["kernel"].shape == (7, 4 * 4 * 32)
    assert params["encoder"]["conv2"]["kernel"].shape == (5, 5, 16, 32)


def test_image_shape_must_divide_by_the_downsampling():
  with pytest.raises(ValueError, match=r"image_shape=\(28, 28, 1\): H and W must be divisible by 8, the "
                                       r"downsampling of model.name='reference'.*; set model.pad=True to pad "
                                       r"the input to \(32, 32, 1\)"):
    oracle.reference(filters=(4, 8, 8))
  with pytest.raises(ValueError, match="divisible"):
    oracle.reference((30, 28, 1))


def test_unknown_output_is_refused():
  with pytest.raises(ValueError, match="output='softmax'"):
    models.init_params(oracle.reference(output="softmax"), jax.random.key(0))


def test_pad_runs_sizes_the_levels_do_not_divide():
  model = oracle.reference((28, 27, 1), filters=(4, 8, 8), latent_dim=3, pad=True)
  params = models.init_params(model, jax.random.key(0))
  x = jax.random.uniform(jax.random.key(1), (2, 28, 27, 1))
  chex.assert_shape(oracle.apply(model, params, x), (2, 28, 27, 1))
  # The same as padding by hand (rows 2 + 2, columns 2 + 3) and cropping the decoder's 32x32 output.
  x_pad = np.pad(np.asarray(x), ((0, 0), (2, 2), (2, 3), (0, 0)))
  z = oracle.apply(model, params, x, "encode")
  inner = oracle.reference((32, 32, 1), filters=(4, 8, 8), latent_dim=3)
  np.testing.assert_allclose(z, oracle.apply(inner, params, x_pad, "encode"), rtol=1e-6)
  full = oracle.apply(inner, params, x_pad, "logits")
  np.testing.assert_allclose(oracle.apply(model, params, x, "logits"),
                             full[:, 2:30, 2:29], rtol=1e-6)
  assert params["decoder"]["project"]["kernel"].shape == (3, 4 * 4 * 8)


class _MlpEncoder(nn.Module):
  width: int
  latent_dim: int
  head: models.Head

  @nn.compact
  def __call__(self, x):
    h = nn.relu(nn.Dense(self.width)(x.reshape(x.shape[0], -1)))
    return models.heads.encoder_head(self.head, self.latent_dim, h.reshape(x.shape[0], 1, 1, -1))


class _MlpDecoder(nn.Module):
  width: int
  image_shape: tuple
  head: models.Head

  @nn.compact
  def __call__(self, z):
    h = nn.relu(models.heads.decoder_head(self.head, z, (1, 1, self.width)))
    y = nn.Dense(int(np.prod(self.image_shape)))(h.reshape(z.shape[0], -1))
    return y.reshape(z.shape[0], *self.image_shape)


def test_a_registered_architecture_serves_every_head():
  mlp = models.Architecture(
      build=lambda cfg, shape, head: (_MlpEncoder(cfg.mlp_width, cfg.latent_dim, head),
                                      _MlpDecoder(cfg.mlp_width, shape, head)),
      downsampling=lambda cfg: 1,
      fields=(fields.Field("model.mlp_width", 32, fields.POSITIVE, fields.NEVER, "test mlp: hidden width"),))
  models.register("test_mlp", mlp)
  try:
    c = config_lib.get_default()
    assert c.model.mlp_width == 32 and "model.mlp_width" in config_lib.by_name()
    c.model.name, c.model.latent_dim = "test_mlp", 3
    config_lib.validate(c)
    for objective in ("ae", "vae"):
      c.objective = objective
      model = train.build_model(c, (6, 5, 1))
      params = models.init_params(model, jax.random.key(0))
      x = jnp.ones((2, 6, 5, 1))
      chex.assert_shape(oracle.apply(model, params, x), (2, 6, 5, 1))
      chex.assert_shape(oracle.apply(model, params, x, "encode"), (2, 3))
    assert models.ARCHITECTURES["test_mlp"].module == __name__
    with pytest.raises(ValueError, match=r"model.name='test_mpl': expected one of \('reference', 'resnet', "
                                         r"'conv64', 'test_mlp'\) \(did you mean test_mlp\?\)"):
      models.get("test_mpl")
    with pytest.raises(ValueError,
                       match="model 'reference' is already registered by ae_jax.models.reference"):
      models.register("reference", mlp)
  finally:
    del models.ARCHITECTURES["test_mlp"]
  c = ml_collections.ConfigDict(config_lib.get_default().to_dict())
  assert "mlp_width" not in c.model  # gone with the registration
