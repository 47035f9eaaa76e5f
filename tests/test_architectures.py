"""The resnet and conv64 architectures: their blocks against float64 numpy, their layer lists and
parameter counts, and every objective through them."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ae_jax import config as config_lib
from ae_jax import models, objectives, train
from ae_jax.models import resnet
import oracle

TINY_RESNET = {"model.name": "resnet", "model.channels": 4, "model.channel_mult": (1, 2),
               "model.num_res_blocks": 1, "model.norm_groups": 2, "model.latent_dim": 3}


def _np_group_norm(x, groups, scale, bias, eps=1e-6):
  b, h, w, c = x.shape
  g = x.reshape(b, h, w, groups, c // groups)
  mean = g.mean(axis=(1, 2, 4), keepdims=True)
  var = g.var(axis=(1, 2, 4), keepdims=True)
  return ((g - mean) / np.sqrt(var + eps)).reshape(b, h, w, c) * scale + bias


def _np_swish(x):
  return x / (1 + np.exp(-x))


def _random_params(tree, seed=0):
  """Every param random (GroupNorm's scale and bias too, so their placement shows)."""
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(treedef, [0.5 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


def test_resnet_block_against_numpy():
  x = np.asarray(jax.random.normal(jax.random.key(1), (2, 4, 4, 4)), np.float32)
  block = resnet.ResnetBlock(6, "group", 2, "xla")
  p = _random_params(block.init(jax.random.key(0), x)["params"])
  got = block.apply({"params": p}, x)
  q = oracle.as64(p)
  h = _np_swish(_np_group_norm(x.astype(np.float64), 2, q["norm1"]["GroupNorm_0"]["scale"],
                               q["norm1"]["GroupNorm_0"]["bias"]))
  h = oracle.conv_same(h, q["conv1"]["kernel"], q["conv1"]["bias"], 1)
  h = _np_swish(_np_group_norm(h, 2, q["norm2"]["GroupNorm_0"]["scale"], q["norm2"]["GroupNorm_0"]["bias"]))
  h = oracle.conv_same(h, q["conv2"]["kernel"], q["conv2"]["bias"], 1)
  shortcut = oracle.conv_same(x.astype(np.float64), q["nin_shortcut"]["kernel"], q["nin_shortcut"]["bias"], 1)
  np.testing.assert_allclose(got, shortcut + h, rtol=1e-4, atol=1e-5)
  same_width = resnet.ResnetBlock(4, "group", 2, "xla")  # no shortcut conv: x + h
  assert "nin_shortcut" not in same_width.init(jax.random.key(0), x)["params"]


def test_attention_block_against_numpy():
  x = np.asarray(jax.random.normal(jax.random.key(1), (2, 3, 2, 4)), np.float32)
  block = resnet.AttnBlock("group", 2)
  p = _random_params(block.init(jax.random.key(0), x)["params"])
  got = block.apply({"params": p}, x)
  q = oracle.as64(p)
  norm = q["norm"]["GroupNorm_0"]
  h = _np_group_norm(x.astype(np.float64), 2, norm["scale"], norm["bias"])
  h = h.reshape(2, 6, 4)
  qq, kk, vv = (h @ q[n]["kernel"] + q[n]["bias"] for n in ("q", "k", "v"))
  w = np.einsum("bic,bjc->bij", qq, kk) / 2.0  # 1 / sqrt(C), C = 4
  w = np.exp(w - w.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  out = np.einsum("bij,bjc->bic", w, vv) @ q["proj_out"]["kernel"] + q["proj_out"]["bias"]
  np.testing.assert_allclose(got, x + out.reshape(2, 3, 2, 4), rtol=1e-4, atol=1e-5)


def test_downsample_is_the_anchors_pad_bottom_right_then_valid_conv():
  x = np.asarray(jax.random.normal(jax.random.key(1), (1, 6, 6, 2)), np.float64)
  k = np.asarray(jax.random.normal(jax.random.key(2), (3, 3, 2, 2)), np.float64)
  xp = np.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))  # latent diffusion's Downsample
  valid = np.zeros((1, 3, 3, 2))
  for i in range(3):
    for j in range(3):
      valid += np.einsum("bhwc,cd->bhwd", xp[:, i:i + 5:2, j:j + 5:2], k[i, j])
  np.testing.assert_allclose(oracle.conv_same(x, k, 0.0, 2), valid, rtol=1e-12)
  conv = models.layers.conv("xla", 2, 3, 2, "down")
  got = conv.apply({"params": {"kernel": k.astype(np.float32), "bias": np.zeros(2, np.float32)}},
                   x.astype(np.float32))
  np.testing.assert_allclose(got, valid, rtol=1e-4, atol=1e-5)


def _layers(params):
  return {"/".join(str(getattr(k, "key", k)) for k in path): v.shape
          for path, v in jax.tree_util.tree_flatten_with_path(params)[0]}


def test_conv64_is_the_beta_vae_net_layer_by_layer():
  c = oracle.tiny_config("vae", **{"model.name": "conv64", "model.latent_dim": 10})
  params = models.init_params(train.build_model(c, (64, 64, 1)), jax.random.key(0))
  expected = {  # disentanglement_lib conv_encoder / deconv_decoder, kernel [kh, kw, in, out]
      "encoder/e1": (4, 4, 1, 32), "encoder/e2": (4, 4, 32, 32), "encoder/e3": (2, 2, 32, 64),
      "encoder/e4": (2, 2, 64, 64), "encoder/e5": (1024, 256), "encoder/latent": (256, 20),
      "decoder/project": (10, 256), "decoder/d2": (256, 1024), "decoder/d3": (4, 4, 64, 64),
      "decoder/d4": (4, 4, 64, 32), "decoder/d5": (4, 4, 32, 32), "decoder/d6": (4, 4, 32, 1)}
  shapes = _layers(params)
  assert {k.rsplit("/", 1)[0] for k in shapes} == set(expected)
  for name, kernel in expected.items():
    assert shapes[f"{name}/kernel"] == kernel and shapes[f"{name}/bias"] == kernel[-1:], name
  total = sum(int(np.prod(k)) + k[-1] for k in expected.values())
  assert models.count_params(params) == total == 690_517  # the docstring's count
  assert models.count_params(params["encoder"]) == 309_204
  with pytest.raises(ValueError, match=r"^model.name='conv64': the beta-VAE net has a vector latent"):
    config_lib.validate(oracle.tiny_config("vqvae", **{"model.name": "conv64"}))  # before any data


def test_resnet_layer_list():
  c = oracle.tiny_config("ae", **{**TINY_RESNET, "model.attention_resolutions": (4,)})
  shapes = _layers(models.init_params(train.build_model(c, (8, 8, 3)), jax.random.key(0)))
  blocks = sorted({k.split("/")[1] for k in shapes})
  assert blocks == ["conv_in", "conv_out", "down0_block0", "down0_downsample", "down1_attn0", "down1_block0",
                    "latent", "mid_attn_1", "mid_block_1", "mid_block_2", "norm_out", "project",
                    "up0_block0", "up0_block1", "up1_attn0", "up1_attn1", "up1_block0", "up1_block1",
                    "up1_upsample"]
  assert shapes["encoder/down1_block0/nin_shortcut/kernel"] == (1, 1, 4, 8)  # width 4 -> 8
  assert shapes["encoder/latent/kernel"] == (4 * 4 * 8, 3)  # a Dense on the 4x4x8 features
  assert shapes["decoder/up0_block0/nin_shortcut/kernel"] == (1, 1, 8, 4)
  assert shapes["decoder/conv_out/kernel"] == (3, 3, 4, 3)
  with pytest.raises(ValueError, match=r"^model.norm_groups=3: does not divide the width 4 \(model.chann"):
    config_lib.validate(oracle.tiny_config("ae", **{**TINY_RESNET, "model.norm_groups": 3}))
  # conv_in's width counts too: channels 4 with channel_mult (2, 4) has widths 4, 8, 16.
  with pytest.raises(ValueError, match=r"^model.norm_groups=8: does not divide the width 4 \(model.chann"):
    config_lib.validate(oracle.tiny_config("ae", **{**TINY_RESNET, "model.channel_mult": (2, 4),
                                                    "model.norm_groups": 8}))
  with pytest.raises(ValueError, match=r"^model.attention_resolutions=\(3,\): 3 is not the height of a lev"):
    train.build_model(oracle.tiny_config("ae", **{**TINY_RESNET, "model.attention_resolutions": (3,)}),
                      (8, 8, 3))


def test_resnet_latent_grid_is_mean_and_logvar_per_position_flattened():
  c = oracle.tiny_config("vae", **{**TINY_RESNET, "model.latent_grid": True})
  model = train.build_model(c, (8, 8, 3))
  params = models.init_params(model, jax.random.key(0))
  assert model.latent_shape() == (4 * 4 * 3,)
  x = np.asarray(jax.random.uniform(jax.random.key(1), (2, 8, 8, 3)))
  (mean, logvar), seen = model.apply({"params": params}, x, method="posterior", capture_intermediates=True)
  # Independently: a 1x1 conv of the encoder's last features (swish of norm_out), 3 means and
  # 3 log-variances at each of the 4x4 positions, each half flattened in (h, w, d) order.
  features = oracle.as64(seen["intermediates"]["encoder"]["norm_out"]["__call__"][0])
  features = features / (1 + np.exp(-features))
  k, b = (oracle.as64(params["encoder"]["latent"][n]) for n in ("kernel", "bias"))
  out = features @ k[0, 0] + b
  np.testing.assert_allclose(mean, out[..., :3].reshape(2, 48), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(logvar, out[..., 3:].reshape(2, 48), rtol=1e-4, atol=1e-6)
  # The decoder reads a flat z back as the grid, position by position.
  z = np.asarray(jax.random.normal(jax.random.key(2), (2, 48)), np.float32)
  _, seen = model.apply({"params": params}, z, method="decode_logits", capture_intermediates=True)
  k, b = (oracle.as64(params["decoder"]["project"][n]) for n in ("kernel", "bias"))
  np.testing.assert_allclose(seen["intermediates"]["decoder"]["project"]["__call__"][0],
                             z.reshape(2, 4, 4, 3) @ k[0, 0] + b, rtol=1e-4, atol=1e-6)


# Each objective once (a compile each); between them a vector and a grid latent for the dense head (ae,
# sparse) and for the Gaussian one (iwae, vae); vqvae always quantises the grid.
GRID = {"ae": False, "sparse": True, "iwae": False, "vae": True, "contractive": False, "vqvae": True}


@pytest.mark.parametrize("objective", sorted(objectives.REGISTRY))
def test_every_objective_trains_through_the_resnet(objective):
  c = oracle.tiny_config(objective, **{**TINY_RESNET, "model.latent_grid": GRID.get(objective, True)})
  model = train.build_model(c, (8, 8, 3))
  state = train.create_train_state(model, c, jax.random.key(0))
  x = np.asarray(jax.random.randint(jax.random.key(1), (4, 8, 8, 3), 0, 256), np.uint8)
  step = jax.jit(train.bind_steps(c, model).train)
  new, m = step(state, {"image": x}, jax.random.key(2))
  new, m = step(new, {"image": x}, jax.random.key(2))
  assert np.isfinite(m["loss"]) and int(new.step) == 2
  chex.assert_trees_all_equal_shapes(new.params, state.params)
  moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), new.params["encoder"], state.params["encoder"])
  assert all(jax.tree.leaves(moved)), moved


def test_remat_gives_the_same_gradients_and_bfloat16_keeps_float32_params_and_logits():
  c = oracle.tiny_config("vae", **{**TINY_RESNET, "model.attention_resolutions": (4,)})
  x = np.asarray(jax.random.uniform(jax.random.key(1), (2, 8, 8, 3)), np.float32)
  batch = {"image": x, "input": x, "position": jnp.arange(2)}
  grads = {}
  for remat in (False, True):
    c.model.remat = remat
    model = train.build_model(c, (8, 8, 3))
    params = models.init_params(model, jax.random.key(0))
    fn = objectives.bind(c, model.apply)
    grads[remat] = jax.jit(jax.grad(lambda p, fn=fn: jnp.mean(fn(p, batch, jax.random.key(3))[0])))(params)
  chex.assert_trees_all_close(grads[False], grads[True], rtol=1e-5, atol=1e-7)
  c.model.remat, c.model.dtype = False, "bfloat16"
  model = train.build_model(c, (8, 8, 3))
  params = models.init_params(model, jax.random.key(0))
  assert {a.dtype for a in jax.tree.leaves(params)} == {jnp.dtype("float32")}
  logits = model.apply({"params": params}, x, method="logits")
  assert logits.dtype == jnp.float32
  f32 = oracle.tiny_config("vae", **{**TINY_RESNET, "model.attention_resolutions": (4,)})
  full = train.build_model(f32, (8, 8, 3)).apply({"params": params}, x, method="logits")
  # bf16 compute, float32 params: ~0.4% of a bf16 ulp per layer adds up over the ~20 layers (7.7% here
  # at width 4, 2.6% at width 32; the 4-layer reference: 0.4%).
  assert 0 < float(jnp.linalg.norm(logits - full) / jnp.linalg.norm(full)) < 0.15


def test_contractive_probes_train_through_the_resnet():
  # The Hutchinson path's second-order gradient through the resnet (a vmapped pullback crashed XLA:CPU).
  c = oracle.tiny_config("contractive", **{**TINY_RESNET, "model.latent_grid": True, "contractive.probes": 2})
  model = train.build_model(c, (8, 8, 3))
  state = train.create_train_state(model, c, jax.random.key(0))
  x = np.asarray(jax.random.randint(jax.random.key(1), (4, 8, 8, 3), 0, 256), np.uint8)
  new, m = jax.jit(train.bind_steps(c, model).train)(state, {"image": x}, jax.random.key(2))
  assert np.isfinite(m["loss"]) and m["jacobian_fro2"] > 0
  assert np.any(new.params["encoder"]["conv_in"]["kernel"] != state.params["encoder"]["conv_in"]["kernel"])
