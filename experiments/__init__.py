"""Entry points (`python -m experiments.<name>`).

Importing this package, which every entry point does before JAX starts its
backend, turns off XLA:CPU's YNN fusion unless XLA_FLAGS already sets it: with
it on, the reference train step runs at 1,110 images/s at batch 128 instead of
1,540 (`python -m experiments.benchmark`, see experiments/BENCHMARKS.md). The
flag only touches the CPU backend.
"""

import os

_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FLAG}=".strip()
