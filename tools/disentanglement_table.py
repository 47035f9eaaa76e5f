r"""The disentanglement metrics on representations with a known answer, as a table.

  python -m tools.disentanglement_table

4 factors of 4, 5, 6 and 3 values (3,000 train / 1,000 test points for the metrics from points; 1,000
train / 500 eval points, batch 64, for the sampled BetaVAE and FactorVAE scores), represented by the
factors themselves, a permutation with rescaling and offset, noise, and the factors with the first two
mixed by a 45-degree rotation. tests/test_disentanglement.py asserts the same cases on smaller sets.
"""

import numpy as np

from ae_jax import disentanglement as dis

SIZES = (4, 5, 6, 3)
_C, _S = np.cos(np.pi / 4), np.sin(np.pi / 4)


def representations(noise_rng: np.random.Generator) -> dict:
  def rotated(x):
    y = np.array(x, np.float64)
    y[:, 0], y[:, 1] = _C * x[:, 0] - _S * x[:, 1], _S * x[:, 0] + _C * x[:, 1]
    return y
  return {"factors": lambda x: np.asarray(x, np.float64),
          "permuted": lambda x: x[:, [2, 0, 3, 1]] * np.array([3.0, -0.5, 10.0, 0.1]) + 7.0,
          "noise": lambda x: noise_rng.normal(size=x.shape), "rotated": rotated}


def main():
  data = dis.FactorData(SIZES, lambda f: f.astype(np.float64))
  f_train = data.sample_factors(3000, np.random.default_rng(0))
  f_test = data.sample_factors(1000, np.random.default_rng(1))
  print("| representation | MIG | modularity | SAP | DCI D | DCI C | DCI I | BetaVAE | FactorVAE |")
  print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
  for name, rep in representations(np.random.default_rng(5)).items():
    z_train, z_test = rep(f_train), rep(f_test)
    d = dis.dci(z_train, f_train, z_test, f_test, np.random.default_rng(0))
    b = dis.beta_vae_score(data, rep, np.random.default_rng(0), batch=64, num_train=1000, num_eval=500)
    fv = dis.factor_vae_score(data, rep, np.random.default_rng(0), batch=64, num_train=1000, num_eval=500)
    print(f"| {name} | {dis.mig(z_train, f_train):.3f} | {dis.modularity(z_train, f_train):.3f} | "
          f"{dis.sap(z_train, f_train, z_test, f_test):.3f} | {d['dci_disentanglement']:.3f} | "
          f"{d['dci_completeness']:.3f} | {d['dci_informativeness']:.3f} | "
          f"{b['beta_vae_eval_accuracy']:.3f} | {fv['factor_vae_eval_accuracy']:.3f} |", flush=True)


if __name__ == "__main__":
  main()
