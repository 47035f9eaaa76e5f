"""The final evaluation against closed forms and hand computations; experiments.compare end to end."""

import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from ae_jax import config as config_lib
from ae_jax import data, disentanglement, evaluation, frechet, objectives, probes, train
from ae_jax.data import transforms
from ae_jax.objectives import vae
from conftest import REPO
import oracle


def _setup(objective, **fields):
  cfg = oracle.tiny_config(objective, **{k.replace(".", "__"): v for k, v in fields.items()})
  model = oracle.tiny_model(cfg)
  state = train.create_train_state(model, cfg, jax.random.key(0))
  x = np.asarray(jax.random.uniform(jax.random.key(1), (4, 8, 8, 1)), np.float32)
  return cfg, model, state, {"image": x, "input": x, "position": jnp.arange(4)}


def test_frechet_distance_of_a_set_to_itself_is_zero():
  f = np.random.default_rng(0).normal(size=(500, 6))
  f[:, 5] = 0.0  # a dead feature: a singular covariance
  assert abs(frechet.distance(f, f)) < 1e-9


def test_frechet_distance_matches_the_closed_forms():
  rng = np.random.default_rng(1)
  m1, m2 = rng.normal(size=4), rng.normal(size=4)
  v1, v2 = rng.uniform(0.5, 2, 4), rng.uniform(0.5, 2, 4)
  # Diagonal covariances: ||m1 - m2||^2 + sum (sqrt v1 - sqrt v2)^2.
  np.testing.assert_allclose(frechet.frechet_distance(m1, np.diag(v1), m2, np.diag(v2)),
                             np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2), rtol=1e-10)
  # Full covariances: against scipy's general matrix square root.
  a, b = rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
  s1, s2 = a @ a.T + 0.1 * np.eye(4), b @ b.T + 0.1 * np.eye(4)
  ref = np.sum((m1 - m2) ** 2) + np.trace(s1 + s2 - 2 * np.real(scipy.linalg.sqrtm(s1 @ s2)))
  np.testing.assert_allclose(frechet.frechet_distance(m1, s1, m2, s2), ref, rtol=1e-8)
  # From samples of the two Gaussians: the estimate approaches the closed form.
  x1 = rng.multivariate_normal(m1, s1, 200_000)
  x2 = rng.multivariate_normal(m2, s2, 200_000)
  np.testing.assert_allclose(frechet.distance(x1, x2), ref, rtol=0.02)


def test_feature_classifier_is_deterministic_cached_and_accurate(tmp_path, monkeypatch):
  monkeypatch.setenv("AE_JAX_CACHE", str(tmp_path))
  train_x, train_y, test_x, test_y = data.load_embedded()
  train = data.ArraySource(train_x, train_y)
  model, params = frechet.classifier(train)
  cached = [f for f in os.listdir(tmp_path) if f.startswith("frechet-classifier")]
  assert len(cached) == 1
  again = frechet._train(train)  # trained anew: the same params
  jax.tree.map(np.testing.assert_array_equal, params, again)
  _, loaded = frechet.classifier(data.ArraySource(train_x.copy(), train_y.copy()))  # from the cache
  jax.tree.map(np.testing.assert_array_equal, params, loaded)
  assert frechet.accuracy(model, params, test_x, test_y) > 0.85
  assert frechet.features(model, params, test_x[:10]).shape == (10, 128)


def test_ssim_active_units_and_codebook_use_by_hand():
  x = np.random.default_rng(0).uniform(size=(5, 28, 28, 1)).astype(np.float32)
  assert evaluation.ssim(x, x) == pytest.approx(1.0, abs=1e-5)
  assert evaluation.ssim(x, np.clip(x + 0.3 * np.random.default_rng(1).normal(size=x.shape), 0, 1)) < 0.9
  z = np.random.default_rng(2).normal(size=(1000, 5))
  z[:, 1] *= 0.01  # variance 1e-4: inactive
  z[:, 3] = 0.5
  assert evaluation.active_units(z) == 3
  assert evaluation.codebook_use(np.arange(64) % 16, 512) == {"vq_perplexity": pytest.approx(16.0),
                                                              "vq_codes_used": 16}
  assert evaluation.codebook_use(np.zeros(10, int), 8)["vq_perplexity"] == pytest.approx(1.0)


def test_importance_nll_is_the_iwae_bound_and_tightens_with_samples():
  cfg, model, state, batch = _setup("vae")
  x = np.round(np.asarray(batch["image"]))
  key = jax.random.key(4)
  log_weights = objectives.get("vae").log_weights(cfg, model.apply)
  one = evaluation.importance_nll(log_weights, state.params, x, key, 1, batch_size=3)  # a padded last batch
  keys_B = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.fold_in(key, 0), jnp.arange(len(x)))
  parts, _, _ = jax.jit(functools.partial(vae.sample_parts, num_samples=1, apply_fn=model.apply,
                                          likelihood="bernoulli", scale=None))(state.params, x, x, keys_B)
  np.testing.assert_allclose(one, -vae.iwae_bound(parts), rtol=1e-6)
  many = evaluation.importance_nll(log_weights, state.params, x, key, 120, chunk=50)
  elbo_fn = objectives.bind(cfg, model.apply)
  binary = {**batch, "image": x, "input": x}
  elbo = np.mean(jax.jit(jax.vmap(lambda k: elbo_fn(state.params, binary, k)[1]["elbo"]))(
      jax.random.split(key, 1000)), axis=0)  # the ELBO's expectation, to ~0.01 nats
  assert np.all(many < -elbo)  # log p(x) >= its 120-sample bound >= the ELBO


def test_sampling_traversals_and_interpolation_for_every_latent():
  for objective in ("vae", "ae", "vqvae"):
    _, model, state, batch = _setup(objective)
    x = np.asarray(batch["image"])
    if model.latent != "gaussian":
      with pytest.raises(ValueError, match="train_z=None"):
        probes.sample(model, state.params, 4)
      train_z = probes.embed(model, state.params, np.concatenate([x] * 10))
      train_z = train_z + np.random.default_rng(0).normal(scale=0.1, size=train_z.shape).astype(np.float32)
      images, how = probes.sample(model, state.params, 6, train_z=train_z, components=2)
      assert "mixture" in how
    else:
      images, how = probes.sample(model, state.params, 6)
      assert how == "prior N(0, I)"
    assert images.shape == (6, 8, 8, 1) and np.all((images >= 0) & (images <= 1))
    assert probes.interpolate(model, state.params, x[0], x[1], steps=5).shape == (5, 8, 8, 1)
    if objective == "vqvae":
      with pytest.raises(ValueError, match="grid"):
        probes.traverse(model, state.params, x[0])
      continue
    t = probes.traverse(model, state.params, x[0], values=[-2.0, 0.0, 2.0])
    assert t.shape == (2, 3, 8, 8, 1)
    z = probes.embed(model, state.params, x[:1])[0]
    want = z.copy()
    want[1] = 2.0
    np.testing.assert_allclose(t[1, 2], probes.decode(model, state.params, want[None])[0], rtol=1e-5)
    # By default each dimension moves over its own spread: mean +- k std of reference latents.
    ref = np.random.default_rng(1).normal([0.5, -3.0], [2.0, 0.1], size=(400, 2)).astype(np.float32)
    scaled = probes.traverse(model, state.params, x[0], z_reference=ref, sigmas=(-1.0, 1.0), dims=[1])
    want[1] = ref[:, 1].mean() + ref[:, 1].std()
    np.testing.assert_allclose(scaled[0, 1], probes.decode(model, state.params, want[None])[0], rtol=1e-5)
    if model.latent == "gaussian":  # the prior's N(0, 1) without a reference
      want[1] = -2.0
      np.testing.assert_allclose(probes.traverse(model, state.params, x[0], sigmas=(-2.0,))[1, 0],
                                 probes.decode(model, state.params, want[None])[0], rtol=1e-5)
    else:
      with pytest.raises(ValueError, match="no prior to scale a traversal by: pass z_reference"):
        probes.traverse(model, state.params, x[0])


@pytest.mark.parametrize("objective", ["ae", "vae", "vqvae"])
def test_final_eval_reports_every_number_for_each_latent(objective, tmp_path, monkeypatch):
  monkeypatch.setenv("AE_JAX_CACHE", str(tmp_path))  # a classifier for these random digits
  cfg, model, state, _ = _setup(objective, **{"eval.nll_samples": 6, "eval.num_samples": 60,
                                              "eval.gmm_components": 2, "data.binarize": "dynamic"})
  rng = np.random.default_rng(0)
  ds = data.Dataset(data.ArraySource(rng.integers(0, 256, (80, 8, 8, 1), np.uint8), rng.integers(0, 3, 80)),
                    data.ArraySource(rng.integers(0, 256, (30, 8, 8, 1), np.uint8), rng.integers(0, 3, 30)),
                    "random")
  out = evaluation.final(model, state.params, cfg, ds, jax.random.key(0))
  test_x = ds.test[:].astype(np.float32) / 255
  recon = probes.reconstruct(model, state.params, test_x)
  assert out["det_recon_mse"] == pytest.approx(float(np.mean((recon - test_x) ** 2)), rel=1e-5)
  assert out["ssim"] == pytest.approx(evaluation.ssim(recon, test_x))
  assert 0 <= out["active_units"] <= out["latent_size"] == int(np.prod(model.latent_shape()))
  assert np.isfinite(out["frechet_distance"]) and out["frechet_floor"] >= 0
  assert ("nll" in out) == (objective == "vae") and ("vq_perplexity" in out) == (objective == "vqvae")
  if objective == "vae":  # on the fixed binarisation of the test set
    binary = np.asarray(transforms.binarize(jax.random.key(0), jnp.asarray(test_x), jnp.arange(30)))
    nll_key = jax.random.fold_in(jax.random.key(0), 1)
    want = evaluation.importance_nll(objectives.get("vae").log_weights(cfg, model.apply), state.params,
                                     binary, nll_key, 6)
    assert out["nll"] == pytest.approx(float(np.mean(want)), rel=1e-5) and out["nll_examples"] == 30
  # Without labels: no probes, no Fréchet classifier, and eval.json says so.
  unlabelled = data.Dataset(data.ArraySource(ds.train[:]), data.ArraySource(ds.test[:]), "random")
  out = evaluation.final(model, state.params, cfg, unlabelled, jax.random.key(0))
  assert out["labels"].startswith("none") and "frechet_distance" not in out and "knn_accuracy" not in out
  assert out["det_recon_mse"] > 0
  # eval.final_examples: the table of the first 12 test examples alone.
  cfg.eval.final_examples = 12
  out = evaluation.final(model, state.params, cfg, ds, jax.random.key(0))
  assert out["final_examples"] == 12 and ("nll" not in out or out["nll_examples"] == 12)
  assert out["det_recon_mse"] == pytest.approx(float(np.mean((recon[:12] - test_x[:12]) ** 2)), rel=1e-5)


def _pixel_factors() -> disentanglement.FactorData:
  """Two factors of 8x8 images: which row holds a bright pixel (8) and how bright it is (4)."""
  def observe(f_N2):
    x = np.zeros((len(f_N2), 8, 8, 1), np.float32)
    x[np.arange(len(f_N2)), f_N2[:, 0], 3, 0] = (f_N2[:, 1] + 1) / 4
    return x
  return disentanglement.FactorData((8, 4), observe, ("row", "brightness"))


def test_final_eval_scores_disentanglement_for_a_source_with_factors():
  cfg, model, state, _ = _setup("vae", **{"eval.factor_points": 80, "eval.factor_eval_points": 40,
                                          "eval.factor_batch": 8, "eval.nll_samples": 2})
  factors = _pixel_factors()
  rng = np.random.default_rng(0)
  x = factors.observe(factors.sample_factors(60, rng))
  ds = data.Dataset(data.ArraySource(x[:40]), data.ArraySource(x[40:]), "pixels", factors)
  out = evaluation.final(model, state.params, cfg, ds, jax.random.key(0))
  keys = {"mig", "modularity", "sap", "dci_disentanglement", "dci_completeness", "dci_informativeness",
          "beta_vae_eval_accuracy", "factor_vae_eval_accuracy"}
  assert keys <= set(out) and out["factor_points"] == 80
  direct = evaluation.factor_scores(model, state.params, factors, jax.random.fold_in(jax.random.key(0), 3),
                                    cfg.eval)
  assert {k: direct[k] for k in keys} == {k: out[k] for k in keys}  # deterministic given the eval key
  other = evaluation.factor_scores(model, state.params, factors, jax.random.key(9), cfg.eval)
  assert any(other[k] != out[k] for k in keys)
  cfg.eval.factor_metrics = False
  assert "mig" not in evaluation.final(model, state.params, cfg, ds, jax.random.key(0))


def test_the_disentanglement_study_members_and_table():
  from experiments import configs  # pylint: disable=g-import-not-at-top
  from experiments.configs import dsprites as study  # pylint: disable=g-import-not-at-top

  objective = {}
  for member, spec in configs.DISENTANGLEMENT.items():
    assert spec == f"dsprites:{member}"
    c = study.get_config(member)
    config_lib.validate(c)
    assert c.model.name == "conv64" and c.model.latent_dim == 10 and c.batch_size == 64 and c.eval.final
    assert c.learning_rate == 1e-4 and c.data.source == "dsprites"
    objective[member] = c.objective
  assert objective["beta_vae_16"] == "vae" and study.get_config("beta_vae_16").vae.beta == 16.0
  assert study.get_config("dip_vae_ii").dip_vae.kind == "ii" and len(set(objective.values())) == 5
  with pytest.raises(ValueError, match="dsprites.py:factor_vea: expected one of beta_vae_1"):
    study.get_config("factor_vea")
  # The table, in its own process: experiments.compare defines absl flags that tools.benchmark also defines.
  results = {m: {"objective": o, "mig": 0.1, "elbo": -90.0} for m, o in objective.items()}
  code = ("import json, sys; from experiments import compare; "
          "print(compare.markdown(json.loads(sys.argv[1]), 'a budget', 'disentanglement'))")
  table = subprocess.run([sys.executable, "-c", code, json.dumps(results)], cwd=REPO, capture_output=True,
                         text=True, timeout=120, check=True).stdout
  assert table.count("\n| ") == 10 and "| factor_vae | factor_vae | - | - | 0.100 |" in table


def test_compare_trains_members_and_writes_the_table(tmp_path):
  cmd = [sys.executable, "-m", "experiments.compare", "--workdir", str(tmp_path),
         "--members=ae,vae", "--config.data.source=embedded", "--config.data.train_size=128",
         "--config.data.test_size=60", "--config.num_epochs=1", "--config.batch_size=64",
         "--config.eval.nll_samples=4", "--config.eval.num_samples=100", "--speed_steps=1",
         "--speed_rounds=1"]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads((tmp_path / "compare.json").read_text())["members"]
  assert list(result) == ["ae", "vae"]
  for r in result.values():
    assert np.isfinite(r["frechet_distance"]) and r["frechet_distance"] > r["frechet_floor"] > 0
    assert 0 < r["ssim"] <= 1 and 0 <= r["knn_accuracy"] <= 1 and r["images_per_sec"] > 0
  assert result["ae"]["speed_vs_first"] == 1.0
  assert result["vae"]["nll"] <= -result["vae"]["elbo"] + 0.5 and result["vae"]["nll_examples"] == 60
  table = (tmp_path / "compare.md").read_text()
  assert table.count("\n| ") == 4 and "| vae | vae |" in table  # header, rule, 2 members
  assert (tmp_path / "compare.png").stat().st_size > 10_000
  bad = subprocess.run([sys.executable, "-m", "experiments.compare", "--workdir", str(tmp_path / "x"),
                        "--members=ae,vea"], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert bad.returncode == 2 and "vea" in bad.stderr and "did you mean vae" in bad.stderr
  assert not (tmp_path / "x").exists()
