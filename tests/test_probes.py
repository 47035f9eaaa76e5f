"""Latent-space tools against direct model calls and known answers; the probe and sweep scripts."""

import json
import os
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest

import ae_jax
from ae_jax import checkpoint, data, metrics, models, probes, sweep
from conftest import REPO
import oracle


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory):
  """A tiny DAE with a 2-D latent, trained through the library on the embedded digits."""
  workdir = str(tmp_path_factory.mktemp("probes") / "run")
  cfg = ae_jax.default_config()
  cfg.data.source = "embedded"
  cfg.data.train_size = 256
  cfg.data.test_size = 100
  cfg.model.latent_dim = 2
  cfg.noise.kind = "gaussian"
  cfg.num_epochs = 2
  ae_jax.train_and_evaluate(cfg, workdir)
  return workdir


@pytest.fixture(scope="module")
def trained(trained_dir):
  return probes.load(trained_dir)


def test_load_restores_model_and_params(trained, trained_dir):
  assert trained.step == 16 and trained.model.latent_dim == 2
  assert models.count_params(trained.params) == models.count_params(
      models.init_params(trained.model, jax.random.key(0)))
  assert trained.config.noise.kind == "gaussian"


def test_embed_reconstruct_decode_match_the_model(trained):
  ds = data.load(trained.config.data)
  x = data.to_float(ds.test[:37])  # not a multiple of the batch: the padded path
  z = probes.embed(trained.model, trained.params, x, batch_size=16)
  direct_z = oracle.apply(trained.model, trained.params, x, "encode")
  np.testing.assert_allclose(z, direct_z, rtol=1e-5, atol=1e-6)
  recon = probes.reconstruct(trained.model, trained.params, x, batch_size=16)
  np.testing.assert_allclose(recon, oracle.apply(trained.model, trained.params, x),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(probes.decode(trained.model, trained.params, z), recon,
                             rtol=1e-5, atol=1e-6)


def test_interpolation_ends_at_the_reconstructions(trained):
  ds = data.load(trained.config.data)
  a, b = data.to_float(ds.test[:2])
  recon = probes.reconstruct(trained.model, trained.params, np.stack([a, b]))
  for method in ("linear", "spherical", "slerp"):
    path = probes.interpolate(trained.model, trained.params, a, b, steps=7, method=method)
    assert path.shape == (7, 28, 28, 1)
    np.testing.assert_allclose(path[0], recon[0], atol=1e-5)
    np.testing.assert_allclose(path[-1], recon[1], atol=1e-5)
  with pytest.raises(ValueError, match="method='cubic': expected 'linear' or 'spherical'"):
    probes.interpolate(trained.model, trained.params, a, b, method="cubic")
  np.testing.assert_array_equal(  # 'slerp' is the same path as 'spherical'
      probes.interpolate(trained.model, trained.params, a, b, 5, "spherical"),
      probes.interpolate(trained.model, trained.params, a, b, 5, "slerp"))


def test_probing_api_says_what_shapes_it_expects(trained):
  x = np.zeros((28, 28, 1), np.float32)
  with pytest.raises(ValueError, match=r"^images_NHWC: shape \(28, 28, 1\), expected \[N, 28, 28, 1\] "
                                       r"\(one example: x\[None\]\)$"):
    probes.embed(trained.model, trained.params, x)
  with pytest.raises(ValueError, match=r"^images_NHWC: shape \(2, 32, 32, 1\), expected \[N, 28, 28, 1\]$"):
    probes.reconstruct(trained.model, trained.params, np.zeros((2, 32, 32, 1)))
  with pytest.raises(ValueError, match=r"^z_ND: shape \(3, 5\), expected \[N, 2\]$"):
    probes.decode(trained.model, trained.params, np.zeros((3, 5)))
  assert probes.embed(trained.model, trained.params, x[None]).shape == (1, 2)


def test_slerp_keeps_unit_vectors_on_the_sphere():
  a, b = np.array([1.0, 0.0]), np.array([0.0, 1.0])
  path = probes.slerp(a, b, np.linspace(0, 1, 5))
  np.testing.assert_allclose(np.linalg.norm(path, axis=1), 1.0, atol=1e-12)
  np.testing.assert_allclose(path[2], [np.sqrt(0.5), np.sqrt(0.5)], atol=1e-12)


def test_probes_on_known_answers():
  rng = np.random.default_rng(0)
  y = np.repeat(np.arange(3), 50)
  separable = rng.normal(size=(150, 4)) * 0.1 + np.eye(3, 4)[y] * 5
  assert probes.linear_probe_accuracy(separable, y, separable, y) == 1.0
  assert probes.knn_accuracy(separable, y, separable, y, k=3) == 1.0
  noise_only = rng.normal(size=(150, 4))
  assert probes.knn_accuracy(noise_only[:100], y[:100], noise_only[100:], y[100:]) < 0.8


def test_pca_matches_the_top_singular_directions():
  rng = np.random.default_rng(1)
  z = rng.normal(size=(200, 5)) * np.array([10.0, 3.0, 1.0, 0.5, 0.1])
  p = probes.pca_2d(z)
  np.testing.assert_allclose(np.abs(np.corrcoef(p[:, 0], z[:, 0])[0, 1]), 1.0, atol=1e-3)
  np.testing.assert_allclose(p.var(0), np.sort((z - z.mean(0)).var(0))[::-1][:2], rtol=0.05)


def test_latent_grid_shape_and_1d_refusal(trained):
  grid = probes.latent_grid(trained.model, trained.params, ((-1, 1), (-2, 2)), n=4)
  assert grid.shape == (4, 4, 28, 28, 1)
  with pytest.raises(ValueError, match="latent_dim=16"):
    probes.latent_grid(oracle.reference(), None, ((0, 1), (0, 1)))


def test_probe_command_writes_report_and_pictures(trained_dir):
  cmd = [sys.executable, "-m", "experiments.probe", "--workdir", trained_dir, "--max_train=256",
         "--tsne_points=100"]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(trained_dir, "probes.json")) as f:
    report = json.load(f)
  assert f"knn_accuracy: {report['knn_accuracy']}" in proc.stdout  # the command prints the report
  for k in ("linear_probe_accuracy", "knn_accuracy", "pixel_linear_probe_accuracy",
            "pixel_knn_accuracy"):
    assert 0.1 < report[k] <= 1.0, (k, report[k])  # above chance on 10 classes
  assert report["latent_dim"] == 2 and report["num_train"] == 256 and report["num_test"] == 100
  assert report["pictures"] == ["interpolation.png", "latent_scatter.png", "latent_tsne.png",
                                "manifold.png", "training_curves.png"]
  for name in report["pictures"]:
    assert os.path.getsize(os.path.join(trained_dir, name)) > 1000


def test_noise_sweep(trained_dir):
  sweep.noise_sweep(trained_dir)
  with open(os.path.join(trained_dir, "sweep.json")) as f:
    rows = json.load(f)["rows"]
  assert [(r["kind"], r.get("sigma", r.get("nu"))) for r in rows][:4] == [
      ("gaussian", 0.25), ("gaussian", 0.5), ("gaussian", 0.75), ("gaussian", 1.0)]
  assert len(rows) == 12
  gauss = [r["corruption_mse"] for r in rows if r["kind"] == "gaussian"]
  assert gauss == sorted(gauss)  # more noise, worse input
  with open(os.path.join(trained_dir, "eval.json")) as f:
    ev = json.load(f)
  # sigma=0.5 is the training corruption with the run's eval key: the run's own eval numbers.
  assert [r["trained_level"] for r in rows] == [False, True] + [False] * 10
  for k in ("corruption_mse", "recon_mse", "recon_from_clean_mse"):
    np.testing.assert_allclose(rows[1][k], ev[k], rtol=1e-6)
  md = open(os.path.join(trained_dir, "sweep.md")).read()
  assert md.count("\n") == 16 and "| masking | nu=0.7 |" in md and "| gaussian | sigma=0.5 * |" in md
  assert md.startswith(f"Clean-input reconstruction MSE (baseline): {ev['recon_from_clean_mse']:.4f}")
  for kind in ("gaussian", "masking", "salt_and_pepper"):
    assert os.path.getsize(os.path.join(trained_dir, f"sweep_{kind}.png")) > 1000


def test_load_gives_the_ema_params_the_run_evaluated(tmp_path):
  cfg = ae_jax.default_config()
  cfg.data.source, cfg.data.train_size, cfg.data.test_size = "embedded", 64, 32
  cfg.optimizer, cfg.learning_rate, cfg.ema_decay = "sgd", 0.5, 0.5
  ae_jax.train_and_evaluate(cfg, str(tmp_path))
  loaded = probes.load(str(tmp_path))
  raw = checkpoint.read_latest(str(tmp_path))[1]
  ema = raw["opt_state"][-1]["ema"]  # chain(sgd, track_ema): the last part's state, as saved
  chex.assert_trees_all_equal(jax.tree.map(np.asarray, loaded.params), ema)
  assert metrics.relative_distance(loaded.params, raw["params"]) > 1e-4  # not the raw params
