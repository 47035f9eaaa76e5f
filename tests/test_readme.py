"""The README's own-loop example runs as written and trains; the docs' examples run too."""

import os
import re

from conftest import REPO


def test_readme_jitted_step_example(capsys):
  with open(os.path.join(REPO, "README.md")) as f:
    readme = f.read()
  blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
  example = next(b for b in blocks if "bind_steps" in b)
  scope = {}
  exec(compile(example, "README.md", "exec"), scope)  # pylint: disable=exec-used
  assert int(scope["state"].step) == 100
  assert scope["z_BD"].shape == (8, 16)
  printed = float(capsys.readouterr().out.strip().splitlines()[-1])
  assert 0.0 < printed < 0.1  # the reference DAE's MSE falls well below its start (~0.11)


def test_every_docs_link_points_at_a_file():
  pages = [os.path.join(REPO, "README.md")] + [os.path.join(REPO, "docs", p) for p in os.listdir(
      os.path.join(REPO, "docs")) if p.endswith(".md")]
  for page in pages:
    text = open(page).read()
    for target in re.findall(r"\]\(([^)#]+?)\)", text):
      if target.startswith("http"):
        continue
      path = os.path.normpath(os.path.join(os.path.dirname(page), target))
      assert os.path.exists(path), f"{page}: {target}"
