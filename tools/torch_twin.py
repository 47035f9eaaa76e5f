r"""The ResNet autoencoder's train step against the same architecture written in PyTorch, on CPU.

  pip install -e '.[bench]' --extra-index-url https://download.pytorch.org/whl/cpu
  python -m tools.torch_twin                      # 32x32x3 and 64x64x3, batch 32
  python -m tools.torch_twin --sizes=64 --channels=64 --num_res_blocks=2

The twin (`TorchAutoencoder`) is latent diffusion's Encoder/Decoder layer for
layer as `model.name='resnet'` builds it (GroupNorm(groups, eps 1e-6), swish,
3x3 convs, 1x1 shortcuts, the bottom/right-padded stride-2 downsample, the
middle's attention, nearest x2 upsampling, a per-position latent of
latent_dim channels), so both have the same parameter count (checked). The step
is the `ae` objective with MSE: sigmoid(decoder(encoder(x))) against x, Adam.
Each measurement runs in a fresh process, JAX (each --conv_impls) and PyTorch
alternating, so drift on a shared machine reaches both alike: the first step's seconds
(JAX: tracing and compiling; PyTorch: its first eager step), then images/s over
--steps further steps, and the process's peak RSS (VmHWM). Prints one JSON
object per run, then a markdown table of medians and the JAX / PyTorch ratio.
"""

import json
import os
import statistics
import subprocess
import sys
import time

from absl import app, flags

from tools import whole_process

FLAGS = flags.FLAGS
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def define_flags() -> None:
  flags.DEFINE_list("sizes", ["32", "64"], "Image heights/widths (3 channels).")
  flags.DEFINE_integer("batch", 32, "Batch size.")
  flags.DEFINE_integer("steps", 10, "Timed steps after the first.")
  flags.DEFINE_integer("pairs", 2, "JAX/PyTorch pairs per size.")
  flags.DEFINE_integer("channels", 32, "model.channels.")
  flags.DEFINE_list("channel_mult", ["1", "2", "4"], "model.channel_mult.")
  flags.DEFINE_integer("num_res_blocks", 1, "model.num_res_blocks.")
  flags.DEFINE_integer("norm_groups", 32, "model.norm_groups.")
  flags.DEFINE_integer("latent_dim", 4, "model.latent_dim (channels per latent position).")
  flags.DEFINE_list("conv_impls", ["auto", "matmul"], "JAX model.conv_impl values to measure.")
  flags.DEFINE_string("one", None, "Internal: run one measurement, 'jax-IMPL:SIZE' or 'torch:SIZE'.")


def spec() -> dict:
  return {"channels": FLAGS.channels, "channel_mult": [int(m) for m in FLAGS.channel_mult],
          "num_res_blocks": FLAGS.num_res_blocks, "norm_groups": FLAGS.norm_groups,
          "latent_dim": FLAGS.latent_dim}


def _images(size: int, batch: int):
  import numpy as np  # pylint: disable=g-import-not-at-top

  return np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)


# ---------------------------------------------------------------- the JAX side


def jax_config(s: dict, conv_impl: str = "auto"):
  from ae_jax import config as config_lib  # pylint: disable=g-import-not-at-top

  c = config_lib.get_default()
  c.objective, c.loss, c.model.conv_impl = "ae", "mse", conv_impl
  c.model.name, c.model.latent_grid = "resnet", True
  c.model.channels, c.model.channel_mult = s["channels"], tuple(s["channel_mult"])
  c.model.num_res_blocks, c.model.norm_groups, c.model.latent_dim = (s["num_res_blocks"], s["norm_groups"],
                                                                      s["latent_dim"])
  return c


def measure_jax(size: int, batch: int, steps: int, s: dict, conv_impl: str = "auto") -> dict:
  import jax  # pylint: disable=g-import-not-at-top

  from ae_jax import models, train  # pylint: disable=g-import-not-at-top

  c = jax_config(s, conv_impl)
  model = train.build_model(c, (size, size, 3))
  state = train.create_train_state(model, c, jax.random.key(0))
  step = jax.jit(train.bind_steps(c, model).train, donate_argnums=0)
  batch_ = {"image": _images(size, batch)}
  t = time.perf_counter()
  state, m = step(state, batch_, jax.random.key(1))
  jax.block_until_ready(m)
  first = time.perf_counter() - t
  t = time.perf_counter()
  for _ in range(steps):
    state, m = step(state, batch_, jax.random.key(1))
  jax.block_until_ready(m)
  seconds = time.perf_counter() - t
  return {"params": models.count_params(state.params), "first_step_s": first,
          "images_per_s": steps * batch / seconds, "loss": float(m["loss"])}


# ------------------------------------------------------------ the PyTorch twin


def torch_model(s: dict, size: int):
  """latent diffusion's Encoder/Decoder at spec s, as model.name='resnet' lays them out."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top

  groups = s["norm_groups"]

  def norm(c):
    return nn.GroupNorm(groups, c, eps=1e-6)

  class ResnetBlock(nn.Module):
    def __init__(self, cin, cout):
      super().__init__()
      self.norm1, self.conv1 = norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
      self.norm2, self.conv2 = norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
      self.shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x):
      h = self.conv1(F.silu(self.norm1(x)))
      h = self.conv2(F.silu(self.norm2(h)))
      return self.shortcut(x) + h

  class AttnBlock(nn.Module):
    def __init__(self, c):
      super().__init__()
      self.norm = norm(c)
      self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x):
      b, c, h, w = x.shape
      y = self.norm(x)
      q, k, v = (f(y).reshape(b, c, h * w).transpose(1, 2) for f in (self.q, self.k, self.v))
      out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(c)) v
      return x + self.proj_out(out.transpose(1, 2).reshape(b, c, h, w))

  class Downsample(nn.Module):
    def __init__(self, c):
      super().__init__()
      self.conv = nn.Conv2d(c, c, 3, stride=2)

    def forward(self, x):
      return self.conv(F.pad(x, (0, 1, 0, 1)))

  class Upsample(nn.Module):
    def __init__(self, c):
      super().__init__()
      self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
      return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))

  widths = [s["channels"] * m for m in s["channel_mult"]]
  blocks = s["num_res_blocks"]

  def middle(c):
    return [ResnetBlock(c, c), AttnBlock(c), ResnetBlock(c, c)]

  enc = [nn.Conv2d(3, s["channels"], 3, padding=1)]
  cin = s["channels"]
  for i, w in enumerate(widths):
    for _ in range(blocks):
      enc.append(ResnetBlock(cin, w))
      cin = w
    if i != len(widths) - 1:
      enc.append(Downsample(w))
  enc += [*middle(cin), norm(cin), nn.SiLU(), nn.Conv2d(cin, s["latent_dim"], 1)]
  dec = [nn.Conv2d(s["latent_dim"], widths[-1], 1), *middle(widths[-1])]
  cin = widths[-1]
  for i in reversed(range(len(widths))):
    for _ in range(blocks + 1):
      dec.append(ResnetBlock(cin, widths[i]))
      cin = widths[i]
    if i != 0:
      dec.append(Upsample(cin))
  dec += [norm(cin), nn.SiLU(), nn.Conv2d(cin, 3, 3, padding=1)]
  del size, torch
  return nn.Sequential(*enc, *dec)


def measure_torch(size: int, batch: int, steps: int, s: dict) -> dict:
  import torch  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  model = torch_model(s, size)
  opt = torch.optim.Adam(model.parameters(), lr=1e-3)
  x = torch.from_numpy(_images(size, batch)).permute(0, 3, 1, 2).float().div(255).contiguous()

  def step():
    opt.zero_grad(set_to_none=True)
    loss = torch.mean((torch.sigmoid(model(x)) - x) ** 2)
    loss.backward()
    opt.step()
    return loss

  t = time.perf_counter()
  step()
  first = time.perf_counter() - t
  t = time.perf_counter()
  for _ in range(steps):
    loss = step()
  seconds = time.perf_counter() - t
  return {"params": sum(p.numel() for p in model.parameters()), "first_step_s": first,
          "images_per_s": steps * batch / seconds, "loss": float(loss), "threads": torch.get_num_threads()}


# ---------------------------------------------------------------- the driver


def run_one(what: str) -> None:
  framework, size = what.split(":")
  if framework == "torch":
    out = measure_torch(int(size), FLAGS.batch, FLAGS.steps, spec())
  else:
    out = measure_jax(int(size), FLAGS.batch, FLAGS.steps, spec(), framework.split("-", 1)[1])
  print(json.dumps({"framework": framework, "size": int(size), **out,
                    "peak_rss_mib": whole_process.peak_rss_mib(os.getpid())}))


def main(argv):
  del argv
  if FLAGS.one:
    return run_one(FLAGS.one)
  passed = [f"--{k}={','.join(map(str, v)) if isinstance(v, list) else v}" for k, v in spec().items()]
  records = []
  for size in (int(v) for v in FLAGS.sizes):
    for _ in range(FLAGS.pairs):
      for framework in (*(f"jax-{impl}" for impl in FLAGS.conv_impls), "torch"):
        cmd = [sys.executable, "-m", "tools.torch_twin", f"--one={framework}:{size}",
               f"--batch={FLAGS.batch}", f"--steps={FLAGS.steps}", *passed]
        out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True).stdout
        records.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(records[-1]), flush=True)
  print("\n| size | run | params | first step s | images/s | / PyTorch | peak RSS MiB |\n"
        "| --- | --- | --- | --- | --- | --- | --- |")
  frameworks = (*(f"jax-{impl}" for impl in FLAGS.conv_impls), "torch")
  for size in (int(v) for v in FLAGS.sizes):
    med = {f: {k: statistics.median(r[k] for r in records if r["framework"] == f and r["size"] == size)
               for k in ("params", "first_step_s", "images_per_s", "peak_rss_mib")} for f in frameworks}
    if len({m["params"] for m in med.values()}) != 1:
      raise SystemExit(f"the twins differ in parameter count: {med}")
    for f, m in med.items():
      print(f"| {size}x{size}x3 | {f} | {int(m['params']):,} | {m['first_step_s']:.1f} | "
            f"{m['images_per_s']:.1f} | {m['images_per_s'] / med['torch']['images_per_s']:.2f} | "
            f"{m['peak_rss_mib']:.0f} |")


if __name__ == "__main__":
  define_flags()
  app.run(main)
