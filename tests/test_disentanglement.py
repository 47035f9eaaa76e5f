"""The disentanglement metrics on representations with a known answer: the factors themselves, a
permutation and rescaling of them, noise, and two factors mixed by a rotation."""

import numpy as np
import pytest

from ae_jax import disentanglement as dis

SIZES = (4, 5, 6, 3)  # at most 20 values each: the 20-bin histogram keeps every class apart


def _factors(n, seed=0):
  return dis.FactorData(SIZES, lambda f: f).sample_factors(n, np.random.default_rng(seed))


def _views(f):
  """Representations of the factors f_NK: each factor alone in one latent, or not."""
  rng = np.random.default_rng(1)
  x = f.astype(np.float64)
  rotated = x.copy()
  c, s = np.cos(np.pi / 4), np.sin(np.pi / 4)
  rotated[:, 0], rotated[:, 1] = c * x[:, 0] - s * x[:, 1], s * x[:, 0] + c * x[:, 1]
  return {"factors": x, "permuted": x[:, [2, 0, 3, 1]] * np.array([3.0, -0.5, 10.0, 0.1]) + 7.0,
          "noise": rng.normal(size=x.shape), "rotated": rotated}


def test_mig_and_modularity_know_the_answers():
  f = _factors(3000)
  v = _views(f)
  m = {name: dis.mig(z, f) for name, z in v.items()}
  assert m["factors"] > 0.98 and m["permuted"] == pytest.approx(m["factors"], abs=1e-12)
  assert m["noise"] < 0.02
  assert m["rotated"] < m["factors"] - 0.3  # two factors share two latents: their gaps shrink
  mod = {name: dis.modularity(z, f) for name, z in v.items()}
  assert mod["factors"] > 0.99 and mod["permuted"] == pytest.approx(mod["factors"], abs=1e-12)
  assert mod["rotated"] < mod["factors"] - 0.05  # 0.94: two of the four latents answer to two factors
  # By hand for one pair: MI of latent 0 with factor 0 is factor 0's entropy (plug-in estimates).
  counts = np.bincount(f[:, 0]) / len(f)
  assert dis.entropy(f)[0] == pytest.approx(-np.sum(counts * np.log(counts)), rel=1e-12)
  assert dis.mutual_information(dis.discretize(v["factors"]), f)[0, 0] == pytest.approx(dis.entropy(f)[0])


def test_sap_and_dci_know_the_answers():
  f_train, f_test = _factors(1000, 0), _factors(400, 1)
  train, test = _views(f_train), _views(f_test)
  sap = {k: dis.sap(train[k], f_train, test[k], f_test) for k in ("factors", "noise")}
  assert sap["factors"] > 0.2 and abs(sap["noise"]) < 0.05
  scores = {k: dis.dci(train[k], f_train, test[k], f_test, np.random.default_rng(0))
            for k in ("factors", "permuted", "noise", "rotated")}
  for k in ("factors", "permuted"):
    assert scores[k]["dci_disentanglement"] > 0.9 and scores[k]["dci_completeness"] > 0.9
    assert scores[k]["dci_informativeness"] > 0.99
  assert scores["noise"]["dci_informativeness"] < 0.4 and scores["noise"]["dci_disentanglement"] < 0.3
  # Mixed by a rotation: still as informative, less disentangled.
  assert scores["rotated"]["dci_informativeness"] > 0.95
  assert scores["rotated"]["dci_disentanglement"] < scores["factors"]["dci_disentanglement"] - 0.1
  again = dis.dci(train["rotated"], f_train, test["rotated"], f_test, np.random.default_rng(0))
  assert again == scores["rotated"]  # deterministic given the rng


@pytest.mark.parametrize("metric,key", [(dis.beta_vae_score, "beta_vae_eval_accuracy"),
                                        (dis.factor_vae_score, "factor_vae_eval_accuracy")])
def test_sampled_scores_know_the_answers(metric, key):
  data = dis.FactorData(SIZES, lambda f: f.astype(np.float64))
  kwargs = {"batch": 32, "num_train": 300, "num_eval": 200}
  if metric is dis.factor_vae_score:
    kwargs["num_variance"] = 2000
  perm = np.array([2, 0, 3, 1])
  noise_rng = np.random.default_rng(5)
  reps = {"factors": lambda x: x, "permuted": lambda x: x[:, perm] * np.array([3.0, 0.5, 10.0, 2.0]),
          "noise": lambda x: noise_rng.normal(size=x.shape)}
  got = {k: metric(data, r, np.random.default_rng(0), **kwargs)[key] for k, r in reps.items()}
  assert got["factors"] == 1.0 and got["permuted"] == 1.0
  assert got["noise"] < 0.45  # chance is 1/4
  assert metric(data, reps["factors"], np.random.default_rng(0), **kwargs) == \
      metric(data, reps["factors"], np.random.default_rng(0), **kwargs)
