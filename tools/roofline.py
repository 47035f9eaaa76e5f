r"""FLOPs per image of each config's train step (XLA's cost analysis) and the bound they put on one
H200 and one TPU v5e.

  python -m tools.roofline                  # every setting below, batch 32
  python -m tools.roofline --settings=kl_f8_vae_folder --batch=64

For each setting the jitted train step (as train_and_evaluate runs it, on one
device) is lowered for the shapes alone (no arrays, no compile) and
`Lowered.cost_analysis()` gives its FLOPs and bytes accessed; per image is per
step over the batch. The bound on images/s is the chip's peak over the FLOPs per
image (bf16 dense tensor-core / MXU peak: the ceiling of model.dtype='bfloat16';
float32 runs lower). "bytes" is XLA's count before fusion, an upper estimate of
memory traffic, so the memory-side bound (bandwidth / bytes) is a floor: a step
whose compute bound exceeds it may be memory-bound. Prints one JSON object per
setting, then a markdown table.
"""

import importlib
import json

from absl import app, flags
import jax
import jax.numpy as jnp

from ae_jax import models, train

FLAGS = flags.FLAGS

# Spec-sheet peaks: NVIDIA H200 SXM (dense BF16 989 TFLOP/s, HBM3e 4.8 TB/s) and Google Cloud TPU v5e
# (BF16 197 TFLOP/s, HBM2 819 GB/s).
CHIPS = {"H200": (989e12, 4.8e12), "TPU v5e": (197e12, 819e9)}
# (config module, image shape, model field overrides)
SETTINGS = {
    "ae_mnist": ("ae_mnist", (28, 28, 1), {}),
    "conv64": ("beta_vae_mnist", (64, 64, 1), {"name": "conv64", "latent_dim": 10}),
    "resnet_ae_folder": ("resnet_ae_folder", (64, 64, 3), {}),
    "kl_f8_vae_folder": ("kl_f8_vae_folder", (64, 64, 3), {}),
    "vae_cifar10": ("vae_cifar10", (32, 32, 3), {}),
}


def define_flags() -> None:
  flags.DEFINE_list("settings", list(SETTINGS), f"Which of {list(SETTINGS)}.")
  flags.DEFINE_integer("batch", 32, "Batch size of the analysed step.")


def analyse(name: str, batch: int) -> dict:
  module, shape, fields = SETTINGS[name]
  c = importlib.import_module(f"experiments.configs.{module}").get_config()
  c.model.update(fields)
  c.model.conv_impl = "xla"  # what GPU/TPU run (layers.resolve)
  model = train.build_model(c, shape)
  state = jax.eval_shape(lambda k: train.create_train_state(model, c, k, total_steps=10_000),
                         jax.random.key(0))
  step = jax.jit(train.bind_steps(c, model).train)
  images = jax.ShapeDtypeStruct((batch, *shape), jnp.uint8)
  cost = step.lower(state, {"image": images}, jax.random.key(1)).cost_analysis()
  flops, bytes_ = cost["flops"] / batch, cost["bytes accessed"] / batch
  out = {"setting": name, "image_shape": list(shape), "params": models.count_params(state.params),
         "batch": batch, "train_gflop_per_image": round(flops / 1e9, 4),
         "unfused_mb_per_image": round(bytes_ / 1e6, 2)}
  for chip, (peak, bandwidth) in CHIPS.items():
    out[f"{chip} images/s bound"] = round(peak / flops)
    out[f"{chip} memory floor images/s"] = round(bandwidth / bytes_)
  return out


def main(argv):
  del argv
  rows = []
  for name in FLAGS.settings:
    rows.append(analyse(name, FLAGS.batch))
    print(json.dumps(rows[-1]), flush=True)
  chips = list(CHIPS)
  print("\n| setting | image | params | train GFLOP / image | " + " | ".join(
      f"{c} bound img/s (memory floor)" for c in chips) + " |\n|" + " --- |" * (4 + len(chips)))
  for r in rows:
    bounds = " | ".join(f"{r[f'{c} images/s bound']:,} ({r[f'{c} memory floor images/s']:,})" for c in chips)
    print(f"| {r['setting']} | {'x'.join(map(str, r['image_shape']))} | {r['params']:,} | "
          f"{r['train_gflop_per_image']:.3f} | {bounds} |")


if __name__ == "__main__":
  define_flags()
  app.run(main)
