"""Disentanglement metrics of a representation against known generative factors, as disentanglement_lib
defines them (google-research/disentanglement_lib, `evaluation/metrics/`; Locatello et al. 2019).

Two kinds:
- from points: `mig`, `modularity`, `sap`, `dci` take representations z_ND and
  the factors' classes f_NK of the same N examples;
- from a sampler: `beta_vae_score` and `factor_vae_score` need batches that
  share one factor, so they take a `FactorData` (factor sizes, a factor sampler
  and the observations of given factors) and `represent` (observations -> z_ND).

Every metric is deterministic given its `rng` (a numpy Generator): sklearn's
estimators get seeds drawn from it. Defaults are the library's protocol
numbers (MIG: 20-bin histograms; SAP: LinearSVC C=0.01; DCI: gradient-boosted
trees; BetaVAE: batch 64, logistic regression; FactorVAE: 10,000 points for the
variances, prune below 0.05, batch 64, majority vote).
"""

from collections.abc import Callable
import dataclasses

import numpy as np

NUM_BINS = 20  # disentanglement_lib's histogram discretizer


@dataclasses.dataclass(frozen=True)
class FactorData:
  """A dataset with known discrete factors: `observe(factors_NK) -> the observations of those factors`."""

  factor_sizes: tuple[int, ...]
  observe: Callable[[np.ndarray], np.ndarray]
  names: tuple[str, ...] = ()

  def sample_factors(self, n: int, rng: np.random.Generator) -> np.ndarray:
    return np.stack([rng.integers(0, s, n) for s in self.factor_sizes], axis=1)


def discretize(z_ND: np.ndarray, num_bins: int = NUM_BINS) -> np.ndarray:
  """Each dimension's values replaced by their bin among num_bins equal-width bins over its range."""
  out = np.zeros(z_ND.shape, np.int64)
  for d in range(z_ND.shape[1]):
    edges = np.histogram(z_ND[:, d], num_bins)[1][:-1]
    out[:, d] = np.digitize(z_ND[:, d], edges)
  return out


def mutual_information(a_NJ: np.ndarray, b_NK: np.ndarray) -> np.ndarray:
  """[J, K] mutual information in nats between discrete columns."""
  from sklearn.metrics import mutual_info_score  # pylint: disable=g-import-not-at-top

  return np.array([[mutual_info_score(a_NJ[:, j], b_NK[:, k]) for k in range(b_NK.shape[1])]
                   for j in range(a_NJ.shape[1])])


def entropy(f_NK: np.ndarray) -> np.ndarray:
  """[K] discrete entropy in nats of each column."""
  return np.array([mutual_information(f_NK[:, k:k + 1], f_NK[:, k:k + 1])[0, 0]
                   for k in range(f_NK.shape[1])])


def mig(z_ND: np.ndarray, f_NK: np.ndarray, num_bins: int = NUM_BINS) -> float:
  """Mutual information gap (Chen et al. 2018): per factor, the gap between the two latents that know
  most about it, over its entropy; the mean over factors."""
  m = mutual_information(discretize(z_ND, num_bins), f_NK)
  top = np.sort(m, axis=0)[::-1]
  return float(np.mean((top[0] - top[1]) / entropy(f_NK)))


def modularity(z_ND: np.ndarray, f_NK: np.ndarray, num_bins: int = NUM_BINS) -> float:
  """Ridgeway & Mozer 2018: 1 - how far each latent's squared MI profile over the factors is from
  one factor alone (0 for a latent that knows nothing); the mean over latents."""
  sq = np.square(mutual_information(discretize(z_ND, num_bins), f_NK))
  peak = sq.max(axis=1)
  with np.errstate(divide="ignore", invalid="ignore"):
    score = 1.0 - (sq.sum(axis=1) - peak) / (peak * (sq.shape[1] - 1))
  return float(np.mean(np.where(peak == 0, 0.0, score)))


def sap(z_train: np.ndarray, f_train: np.ndarray, z_test: np.ndarray, f_test: np.ndarray) -> float:
  """Separated attribute predictability (Kumar et al. 2018): per factor, the test accuracies of a
  linear SVM on each single latent; the gap between the best two; the mean over factors."""
  from sklearn.svm import LinearSVC  # pylint: disable=g-import-not-at-top

  score = np.zeros((z_train.shape[1], f_train.shape[1]))
  for j in range(z_train.shape[1]):
    for k in range(f_train.shape[1]):
      if len(np.unique(f_train[:, k])) < 2:
        continue
      clf = LinearSVC(C=0.01, class_weight="balanced").fit(z_train[:, j:j + 1], f_train[:, k])
      score[j, k] = np.mean(clf.predict(z_test[:, j:j + 1]) == f_test[:, k])
  top = np.sort(score, axis=0)[::-1]
  return float(np.mean(top[0] - top[1]))


def _entropy_base(p: np.ndarray, base: int) -> np.ndarray:
  """Entropy of each row of p (rows sum to 1) in base `base`."""
  with np.errstate(divide="ignore", invalid="ignore"):
    terms = np.where(p > 0, p * np.log(p), 0.0)
  return -terms.sum(axis=-1) / np.log(base)


def dci(z_train: np.ndarray, f_train: np.ndarray, z_test: np.ndarray, f_test: np.ndarray,
        rng: np.random.Generator) -> dict:
  """Eastwood & Williams 2018 with gradient-boosted trees per factor: the importance R[j, k] of latent j
  for factor k; disentanglement (1 - each latent's entropy over factors, weighted by its share of R),
  completeness (1 - each factor's entropy over latents, weighted likewise) and informativeness (the
  trees' mean test accuracy)."""
  from sklearn.ensemble import GradientBoostingClassifier  # pylint: disable=g-import-not-at-top

  d, k = z_train.shape[1], f_train.shape[1]
  importance = np.zeros((d, k))
  accuracy = []
  for i in range(k):
    clf = GradientBoostingClassifier(random_state=int(rng.integers(1 << 31)))
    clf.fit(z_train, f_train[:, i])
    importance[:, i] = np.abs(clf.feature_importances_)
    accuracy.append(np.mean(clf.predict(z_test) == f_test[:, i]))
  total = importance.sum()

  def weighted(r, base):  # rows: what is spread; their weights: their share of all importance
    sums = r.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
      p = np.where(sums[:, None] > 0, r / sums[:, None], 0.0)
    return float(np.sum((1.0 - _entropy_base(p, base)) * sums / total)) if total > 0 else 0.0

  return {"dci_disentanglement": weighted(importance, k) if k > 1 else 1.0,
          "dci_completeness": weighted(importance.T, d) if d > 1 else 1.0,
          "dci_informativeness": float(np.mean(accuracy))}


def _fixed_factor_batch(data: FactorData, k: int, batch: int, rng: np.random.Generator) -> np.ndarray:
  """A batch of factors with factor k at one random value, the others random."""
  f = data.sample_factors(batch, rng)
  f[:, k] = rng.integers(0, data.factor_sizes[k])
  return f


CHUNK_IMAGES = 8192  # the sampler-based scores observe and represent their batches this many images at a time


def _represent_batches(data: FactorData, represent: Callable, factor_batches: list) -> list:
  """represent(observe(f)) for each [batch, K] array of factors, many batches per call."""
  out, size = [], len(factor_batches[0]) if factor_batches else 1
  step = max(1, CHUNK_IMAGES // size)
  for start in range(0, len(factor_batches), step):
    group = factor_batches[start:start + step]
    z = represent(data.observe(np.concatenate(group)))
    out += np.split(np.asarray(z), np.cumsum([len(g) for g in group])[:-1])
  return out


def beta_vae_score(data: FactorData, represent: Callable, rng: np.random.Generator, batch: int = 64,
                   num_train: int = 10_000, num_eval: int = 5_000) -> dict:
  """Higgins et al. 2017: a point is the mean |z(x1) - z(x2)| over `batch` pairs that share one factor k
  (its label); a logistic regression's train and eval accuracy at telling k."""
  from sklearn.linear_model import LogisticRegression  # pylint: disable=g-import-not-at-top

  def points(n):
    pairs, y = [], []
    for _ in range(n):
      k = int(rng.integers(len(data.factor_sizes)))
      first, second = data.sample_factors(batch, rng), data.sample_factors(batch, rng)
      second[:, k] = first[:, k]
      pairs += [first, second]
      y.append(k)
    z = _represent_batches(data, represent, pairs)
    return np.asarray([np.mean(np.abs(a - b), axis=0) for a, b in zip(z[::2], z[1::2])]), np.asarray(y)

  x_train, y_train = points(num_train)
  x_eval, y_eval = points(num_eval)
  clf = LogisticRegression(random_state=int(rng.integers(1 << 31))).fit(x_train, y_train)
  return {"beta_vae_train_accuracy": float(clf.score(x_train, y_train)),
          "beta_vae_eval_accuracy": float(clf.score(x_eval, y_eval))}


def factor_vae_score(data: FactorData, represent: Callable, rng: np.random.Generator, batch: int = 64,
                     num_variance: int = 10_000, num_train: int = 10_000, num_eval: int = 5_000,
                     prune: float = 0.05) -> dict:
  """Kim & Mnih 2018: latents scaled by their global std (those with variance below `prune` dropped);
  a vote is (the kept latent of least variance over a batch that fixes factor k, k); a majority-vote
  classifier from latents to factors, its train and eval accuracy."""
  z = _represent_batches(data, represent, [data.sample_factors(num_variance, rng)])[0]
  scale = np.std(z, axis=0, ddof=1)
  active = np.square(scale) >= prune
  if not active.any():
    return {"factor_vae_train_accuracy": 0.0, "factor_vae_eval_accuracy": 0.0, "factor_vae_active": 0}
  num_factors, num_latents = len(data.factor_sizes), z.shape[1]

  def votes(n):
    ks = [int(rng.integers(num_factors)) for _ in range(n)]
    batches = [_fixed_factor_batch(data, k, batch, rng) for k in ks]
    table = np.zeros((num_latents, num_factors), np.int64)
    for k, zb in zip(ks, _represent_batches(data, represent, batches)):
      v = np.var(zb / scale, axis=0, ddof=1)
      table[int(np.argmin(np.where(active, v, np.inf))), k] += 1
    return table

  train, evaluate = votes(num_train), votes(num_eval)
  assign = np.argmax(train, axis=1)  # each latent's majority factor
  return {"factor_vae_train_accuracy": float(train[np.arange(num_latents), assign].sum() / train.sum()),
          "factor_vae_eval_accuracy": float(evaluate[np.arange(num_latents), assign].sum() / evaluate.sum()),
          "factor_vae_active": int(active.sum())}


def scores(data: FactorData, represent: Callable, rng: np.random.Generator, num_points: int = 10_000,
           num_eval: int = 5_000, batch: int = 64) -> dict:
  """Every score with disentanglement_lib's protocol sizes as defaults: MIG and modularity on num_points
  sampled points, SAP and DCI trained on them and tested on num_eval more; the BetaVAE score on
  num_points / num_eval points of `batch` pairs; the FactorVAE score with num_points for the variances,
  num_points / num_eval votes of `batch` examples. Deterministic given rng."""
  f_train, f_test = data.sample_factors(num_points, rng), data.sample_factors(num_eval, rng)
  z_train, z_test = _represent_batches(data, represent, [f_train, f_test])
  out = {"mig": mig(z_train, f_train), "modularity": modularity(z_train, f_train),
         "sap": sap(z_train, f_train, z_test, f_test), **dci(z_train, f_train, z_test, f_test, rng)}
  out.update(beta_vae_score(data, represent, rng, batch, num_points, num_eval))
  out.update(factor_vae_score(data, represent, rng, batch, num_points, num_points, num_eval))
  return out
