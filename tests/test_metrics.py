"""Metric sinks: atomic files, eval names old and new, the relative distance between pytrees."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ae_jax import metrics


def test_resume_rewrites_metrics_jsonl_whole(tmp_path):
  w = metrics.Writer(str(tmp_path))
  for step in (1, 2, 3):
    w.write(step, "train", {"train_loss": float(step)})
  w.close()
  kept = metrics.read_jsonl(str(tmp_path / "metrics.jsonl"))  # read (and checked) before any write
  metrics.Writer(str(tmp_path), resume_step=2, kept=kept).close()  # step 3 is redone
  assert [r["step"] for r in metrics.read_jsonl(str(tmp_path / "metrics.jsonl"))] == [1, 2]
  assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


_WRITE_THEN_IMPORT_TORCH = """
import os, sys
from ae_jax import metrics
w = metrics.Writer(sys.argv[1])
w.write(1, "train", {"loss": 0.5})
w.close()
print("after the writer:", "torch" in sys.modules, os.path.exists(os.environ["TORCH_MARK"]))
import torch
print("then:", torch.__file__)
"""


def test_the_writer_leaves_torch_unimported_and_a_later_import_finds_it(tmp_path):
  # A package named torch that records its import (tensorboardX imports the real one, ~3 s,
  # whenever it is installed).
  (tmp_path / "site" / "torch").mkdir(parents=True)
  (tmp_path / "site" / "torch" / "__init__.py").write_text(
      "import os\nopen(os.environ['TORCH_MARK'], 'w').close()\nTensor = type('Tensor', (), {})\n")
  mark = tmp_path / "torch_imported"
  (tmp_path / "w").mkdir()
  path = os.pathsep.join([str(tmp_path / "site"), *filter(None, [os.environ.get("PYTHONPATH")])])
  out = subprocess.run([sys.executable, "-c", _WRITE_THEN_IMPORT_TORCH, str(tmp_path / "w")], text=True,
                       capture_output=True, env={**os.environ, "PYTHONPATH": path, "TORCH_MARK": str(mark)})
  assert out.returncode == 0, out.stderr[-2000:]
  lines = out.stdout.splitlines()
  assert lines[0] == "after the writer: False False", out.stdout
  assert lines[1] == f"then: {tmp_path / 'site' / 'torch' / '__init__.py'}" and mark.exists()
  assert [r["loss"] for r in metrics.read_jsonl(str(tmp_path / "w" / "metrics.jsonl"))] == [0.5]
  assert os.listdir(tmp_path / "w" / "tensorboard")  # the events file


def test_a_cut_last_line_is_dropped_only_when_asked_and_a_bad_middle_line_is_named(tmp_path):
  path = tmp_path / "metrics.jsonl"
  lines = [json.dumps({"kind": "train", "step": s, "train_loss": 1.0}) for s in (1, 2, 3)]
  path.write_text("\n".join(lines)[:-10])
  with pytest.raises(metrics.DamagedFile, match=r"metrics.jsonl: line 3 is not a JSON record"):
    metrics.read_jsonl(str(path))
  assert [r["step"] for r in metrics.read_jsonl(str(path), drop_truncated_tail=True)] == [1, 2]
  path.write_text("\n".join([lines[0], lines[1][:-3], lines[2]]) + "\n")  # damage that is not a cut tail
  with pytest.raises(metrics.DamagedFile, match=r"line 2 is not a JSON record .*fix or remove that line"):
    metrics.read_jsonl(str(path), drop_truncated_tail=True)


def test_old_eval_names_are_read_with_todays():
  old = {"kind": "eval", "step": 8, "test_loss": 0.1, "test_mse": 0.1, "denoised_mse": 0.1,
         "noisy_input_mse": 0.3, "clean_input_mse": 0.05, "test_psnr": 10.0}
  assert metrics.upgrade_eval(old) == {"kind": "eval", "step": 8, "loss": 0.1, "recon_mse": 0.1,
                                       "corruption_mse": 0.3, "recon_from_clean_mse": 0.05,
                                       "recon_psnr": 10.0}


def test_read_jsonl_upgrades_eval_records_only(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text(json.dumps({"kind": "train", "step": 1, "train_loss": 1.0}) + "\n"
                  + json.dumps({"kind": "eval", "step": 2, "test_mse": 0.2}) + "\n")
  assert metrics.read_jsonl(str(path)) == [{"kind": "train", "step": 1, "train_loss": 1.0},
                                           {"kind": "eval", "step": 2, "recon_mse": 0.2}]


def test_relative_distance_against_numpy():
  rng = np.random.default_rng(0)
  a = {"w": rng.normal(size=(3, 4)), "b": rng.normal(size=4)}
  b = {"w": a["w"] + 1e-3, "b": a["b"]}
  expected = np.sqrt(12 * 1e-6) / np.sqrt(np.sum(b["w"] ** 2) + np.sum(b["b"] ** 2))
  np.testing.assert_allclose(metrics.relative_distance(b, a),
                             np.sqrt(12e-6 / (np.sum(a["w"] ** 2) + np.sum(a["b"] ** 2))), rtol=1e-9)
  assert metrics.relative_distance(a, a) == 0.0
  np.testing.assert_allclose(metrics.relative_distance(a, b), expected, rtol=1e-9)
