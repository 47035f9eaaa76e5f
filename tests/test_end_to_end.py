"""Tiny runs: the real entry point once, then in-process runs compared with it bit for bit (resume,
mid-epoch resume, host-fed batches, pmap resumed under mesh, a prepared TFDS dataset)."""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import orbax.checkpoint as ocp
import pytest

import ae_jax
from ae_jax import metrics, train
import conftest
from conftest import REPO
from experiments.configs import dae_mnist
import oracle
import runs

# The reference DAE, small: 8 steps per epoch, checkpoints every 5 steps and at each epoch.
SMALL = {"data.source": "idx", "data.train_size": 256, "data.test_size": 96, "batch_size": 32,
         "eval_batch_size": 64, "checkpoint_every_steps": 5, "log_every_steps": 4, "num_images": 4}


def _config(idx_dir, **fields):
  values = {**SMALL, "data.dir": idx_dir, **fields}
  return oracle.set_fields(dae_mnist.get_config(), **{k.replace(".", "__"): v for k, v in values.items()})


def _params(workdir):
  ckpt = os.path.join(workdir, "checkpoints")
  mngr = ocp.CheckpointManager(ckpt)
  step = mngr.latest_step()
  restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  mngr.close()
  return step, restored.state["params"]


def _records(workdir):
  return [{k: v for k, v in r.items() if k not in train.TIMINGS}
          for r in metrics.read_jsonl(os.path.join(workdir, "metrics.jsonl"))]


def _eval(workdir):
  with open(os.path.join(workdir, "eval.json")) as f:
    return json.load(f)


def _run(workdir):
  return json.loads((workdir / "run.json").read_text())


@pytest.fixture(scope="module")
def straight(tmp_path_factory, small_idx_dir):
  """2 epochs through `python -m experiments.train`, the command a user runs (with this process's
  intra-op pool, so that in-process runs compute the same bits)."""
  workdir = tmp_path_factory.mktemp("straight")
  overrides = [f"--config.{k}={v}" for k, v in {**SMALL, "data.dir": small_idx_dir, "num_epochs": 2}.items()]
  cmd = [sys.executable, "-m", "experiments.train", "--config",
         os.path.join(REPO, "experiments", "configs", "dae_mnist.py"), "--workdir", str(workdir), *overrides]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                        env={**os.environ, "JAX_NUM_CPU_DEVICES": "1", "PJRT_NPROC": str(conftest.POOL),
                             "PYTHONUNBUFFERED": "1"})
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir, proc


def test_outputs_of_a_run(straight):
  workdir, proc = straight
  for name in ("metrics.jsonl", "eval.json", "run.json", "reconstructions.png", "denoising.png"):
    assert os.path.getsize(os.path.join(workdir, name)) > 0, name
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir / "tensorboard"))
  ev = _eval(workdir)
  assert sorted(ev) == ["collapsed", "corruption_mse", "corruption_psnr", "epoch", "loss", "mean_image_mse",
                        "num_examples", "output_spread", "param_norm", "recon_from_clean_mse",
                        "recon_from_clean_psnr", "recon_mse", "recon_psnr", "step"]
  assert ev["collapsed"] is False and 0.005 < ev["output_spread"] < 2 and ev["param_norm"] > 1
  for k in ("loss", "recon_mse", "recon_psnr", "corruption_mse", "corruption_psnr",
            "recon_from_clean_mse", "recon_from_clean_psnr"):
    assert np.isfinite(ev[k]), k
  assert ev["epoch"] == 2 and ev["step"] == 16 and ev["num_examples"] == 96
  assert ev["recon_mse"] < ev["corruption_mse"]  # it learned to denoise at all
  run = _run(workdir)
  assert run["param_counts"] == {"encoder": 69008, "decoder": 108993, "total": 178001}
  assert run["data"]["num_train"] == 256 and run["data"]["source"].startswith("idx:")
  assert run["config"]["noise"]["kind"] == "gaussian" and run["versions"]["jax"]
  assert run["objective"] == {"name": "ae", "module": "ae_jax.objectives.reconstruction"}
  assert run["model"] == {"name": "reference", "module": "ae_jax.models.reference"}
  kinds = [r["kind"] for r in metrics.read_jsonl(workdir / "metrics.jsonl")]
  assert kinds.count("eval") == 2 and kinds.count("train") >= 4
  # Progress lines: step, loss, throughput, the data wait, ETA.
  assert re.search(r"img/s, data wait \d+% \| ETA", proc.stderr) and "step 16/16" in proc.stderr
  # The compiled train step went to the persistent compilation cache (conftest: this session's
  # $AE_JAX_CACHE), where later runs load it.
  assert [f for f in os.listdir(os.path.join(os.environ["AE_JAX_CACHE"], "jax"))
          if f.startswith("jit_multi_step-")]


def test_the_library_call_is_the_command_bit_for_bit(straight, tmp_path, small_idx_dir):
  train.train_and_evaluate(_config(small_idx_dir, num_epochs=2), str(tmp_path))
  runs.assert_same_run(straight[0], tmp_path)


def test_stop_after_one_epoch_and_rerun_is_bit_identical(straight, tmp_path, small_idx_dir):
  train.train_and_evaluate(_config(small_idx_dir, num_epochs=1), str(tmp_path))
  assert _params(tmp_path)[0] == 8
  train.train_and_evaluate(_config(small_idx_dir, num_epochs=2), str(tmp_path))
  runs.assert_same_run(straight[0], tmp_path)
  run = _run(tmp_path)
  assert run["resumed_from_step"] == 8 and run["config"]["num_epochs"] == 2
  assert [r["resumed_from_step"] for r in run["previous"]] == [0]  # the first invocation's record
  assert run["previous"][0]["config"]["num_epochs"] == 1


def test_resume_from_a_mid_epoch_checkpoint_is_bit_identical(straight, tmp_path, small_idx_dir):
  workdir = tmp_path / "mid"
  shutil.copytree(straight[0], workdir)
  ckpts = workdir / "checkpoints"
  steps = sorted(int(d) for d in os.listdir(ckpts) if d.isdigit())
  assert 10 in steps, steps  # saved at a checkpoint_every_steps boundary inside epoch 2
  for s in steps:
    if s > 10:
      shutil.rmtree(ckpts / str(s))
  train.train_and_evaluate(_config(small_idx_dir, num_epochs=2), str(workdir))
  assert _run(workdir)["resumed_from_step"] == 10
  runs.assert_same_run(straight[0], workdir)


def test_denoising_vae_on_binarised_data_resumes_bit_identically(tmp_path, small_idx_dir):
  # Latent samples, binarisation and noise all drawn inside the step from (seed, step, index).
  family = {"objective": "vae", "data.binarize": "dynamic", "model.latent_dim": 4, "vae.kl_warmup_steps": 6}
  train.train_and_evaluate(_config(small_idx_dir, num_epochs=2, **family), str(tmp_path / "straight"))
  train.train_and_evaluate(_config(small_idx_dir, num_epochs=1, **family), str(tmp_path / "split"))
  train.train_and_evaluate(_config(small_idx_dir, num_epochs=2, **family), str(tmp_path / "split"))
  assert _run(tmp_path / "split")["resumed_from_step"] == 8
  runs.assert_same_run(tmp_path / "straight", tmp_path / "split")
  result = _eval(tmp_path / "split")
  assert result["elbo"] < 0 < result["kl"] and result["corruption_mse"] > 0


def test_factor_vae_with_two_optimizers_resumes_bit_identically(tmp_path, small_idx_dir):
  # Two sets of params and two Adams in one state: the discriminator's moments resume with the model's,
  # from a mid-epoch checkpoint.
  family = {"objective": "factor_vae", "data.binarize": "dynamic", "model.latent_dim": 4,
            "factor_vae.widths": (32, 32), "factor_vae.gamma": 5.0}
  train.train_and_evaluate(_config(small_idx_dir, num_epochs=2, **family), str(tmp_path / "straight"))
  shutil.copytree(tmp_path / "straight", tmp_path / "mid")
  for s in os.listdir(tmp_path / "mid" / "checkpoints"):
    if s.isdigit() and int(s) > 10:
      shutil.rmtree(tmp_path / "mid" / "checkpoints" / s)
  train.train_and_evaluate(_config(small_idx_dir, num_epochs=2, **family), str(tmp_path / "mid"))
  runs.assert_same_run(tmp_path / "straight", tmp_path / "mid")
  assert _run(tmp_path / "mid")["resumed_from_step"] == 10
  step, params = _params(tmp_path / "mid")
  assert step == 16 and set(params["discriminator"]) == {"d1", "d2", "logits"}
  result = _eval(tmp_path / "mid")
  assert 0 <= result["discriminator_accuracy"] <= 1 and np.isfinite(result["tc"])


def test_rerun_of_a_finished_run_changes_nothing(straight, small_idx_dir, capsys):
  workdir = straight[0]
  before = (_records(workdir), _eval(workdir), (workdir / "run.json").read_text())
  result = train.train_and_evaluate(_config(small_idx_dir, num_epochs=2), str(workdir))
  assert "nothing to do" in capsys.readouterr().out and result == before[1]
  assert (_records(workdir), _eval(workdir), (workdir / "run.json").read_text()) == before


def test_batches_fed_from_the_host_train_the_same(straight, tmp_path, small_idx_dir):
  # data_on_device (default): the images sit on the device and each call sends indices.
  train.train_and_evaluate(_config(small_idx_dir, num_epochs=2, data_on_device=False), str(tmp_path))
  run = _run(tmp_path)
  assert run["data_on_device"] is False and run["steps_per_call"] == 1  # per-backend choice on CPU
  assert _run(straight[0])["data_on_device"] is True
  (step_a, pa), (step_b, pb) = _params(straight[0]), _params(tmp_path)
  assert step_a == step_b == 16
  assert metrics.relative_distance(pa, pb) < 1e-6
  assert [r["step"] for r in _records(tmp_path)] == [r["step"] for r in _records(straight[0])]


def test_pmap_run_on_four_devices_resumes_under_mesh(tmp_path, small_idx_dir):
  train.train_and_evaluate(_config(small_idx_dir, num_epochs=1, parallel="pmap"), str(tmp_path))
  train.train_and_evaluate(_config(small_idx_dir, num_epochs=2, parallel="mesh"), str(tmp_path))
  run = _run(tmp_path)
  assert len(run["devices"]) == 4 and run["parallel"] == "mesh" and run["resumed_from_step"] == 8
  assert run["previous"][0]["parallel"] == "pmap" and len(run["previous"][0]["devices"]) == 4
  assert _eval(tmp_path)["step"] == 16


def test_train_and_evaluate_in_process_on_a_prepared_tfds_dataset(tmp_path, tfds_dir):
  cfg = ae_jax.default_config()
  cfg.data.source = "tfds"  # the default, read from a real prepared dataset
  cfg.data.name, cfg.data.dir, cfg.data.train_size, cfg.data.test_size = "tiny_digits", tfds_dir, 64, 64
  cfg.batch_size = 16
  cfg.loss = "bce"
  cfg.noise.kind = "salt_and_pepper"
  cfg.noise.nu = 0.2
  result = ae_jax.train_and_evaluate(cfg, str(tmp_path))
  assert result["step"] == 4 and result["num_examples"] == 64
  assert np.isfinite(result["loss"]) and result["corruption_mse"] > 0
  run = json.loads((tmp_path / "run.json").read_text())
  assert run["data"]["source"] == f"tfds:tiny_digits@{tfds_dir}" and run["data"]["num_train"] == 64
