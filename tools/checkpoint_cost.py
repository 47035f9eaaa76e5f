r"""What the checkpoint digests cost per save: CRC-32 of every array, beside the save itself.

  python -m tools.checkpoint_cost --workdir /tmp/ckpt_cost [--params 178001,100000000]

For each size, an Adam train state of that many float32 params (params, mu, nu:
3x the bytes) in 10 arrays; the median of 3 of: the digests alone, and a whole
checkpoint.save (digests included) until Orbax has written it.
"""

import os
import shutil
import statistics
import time

from absl import app, flags
import numpy as np

from ae_jax import checkpoint

_WORKDIR = flags.DEFINE_string("workdir", None, "Where the checkpoints go (removed afterwards).")
_PARAMS = flags.DEFINE_list("params", ["178001", "100000000"], "Parameter counts.")


def state_of(n: int) -> dict:
  rng = np.random.default_rng(0)
  sizes = [n // 10] * 9 + [n - 9 * (n // 10)]
  params = {f"w{i}": rng.standard_normal(s).astype(np.float32) for i, s in enumerate(sizes)}
  return {"params": params, "mu": {k: v * 0.1 for k, v in params.items()},
          "nu": {k: v * v for k, v in params.items()}}


def main(argv):
  del argv
  for n in (int(p) for p in _PARAMS.value):
    state = state_of(n)
    nbytes = sum(a.nbytes for d in state.values() for a in d.values())
    digest_s, save_s = [], []
    for attempt in range(3):
      t = time.perf_counter()
      checkpoint.digests(state)
      digest_s.append(time.perf_counter() - t)
      workdir = os.path.join(_WORKDIR.value, str(attempt))
      mngr = checkpoint.manager(workdir, 1)
      t = time.perf_counter()
      checkpoint.save(mngr, 1, state, {"step": 1})
      mngr.wait_until_finished()
      save_s.append(time.perf_counter() - t)
      mngr.close()
      shutil.rmtree(workdir)
    d, s = statistics.median(digest_s), statistics.median(save_s)
    print(f"{n:>11,} params ({nbytes / 2**20:8.1f} MiB with Adam's moments): digests {d * 1e3:8.1f} ms "
          f"({nbytes / d / 2**30:.2f} GiB/s), whole save {s * 1e3:8.1f} ms: digests are {d / s:.1%} of it")


if __name__ == "__main__":
  flags.mark_flag_as_required("workdir")
  app.run(main)
