"""The notebooks: stored without outputs, import ae_jax without redefining it, and run."""

import glob
import os
import re

from nbclient import NotebookClient
import nbformat
import pytest

from conftest import REPO

NOTEBOOKS = sorted(glob.glob(os.path.join(REPO, "notebooks", "*.ipynb")))
# Small sizes so that all three run well inside the CI budget.
TEST_PARAMETERS = {
    "01_autoencoder.ipynb": "TRAIN_SIZE = 512\nEPOCHS = 1\nWORKDIR = 'runs/nb01'",
    "02_denoising.ipynb": "TRAIN_SIZE = 512\nEPOCHS = 2\nBATCH = 32",
    "03_latent_space.ipynb": "TRAIN_SIZE = 1024\nEPOCHS = 3\nWORKDIR = 'runs/nb03'",
}


def test_all_three_are_there():
  assert [os.path.basename(p) for p in NOTEBOOKS] == sorted(TEST_PARAMETERS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_stored_clean_and_only_import_the_library(path):
  nb = nbformat.read(path, as_version=4)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert all(c.outputs == [] and c.execution_count is None for c in code), "strip outputs"
  source = "\n".join(c.source for c in code)
  assert "import ae_jax" in source
  assert not re.search(r"nn\.Module|flax\.linen|def train_step|def eval_step|nn\.Conv", source)
  assert sum("parameters" in c.metadata.get("tags", []) for c in code) == 1


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_executes(path, tmp_path):
  nb = nbformat.read(path, as_version=4)
  params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
  params.source = TEST_PARAMETERS[os.path.basename(path)]
  NotebookClient(nb, timeout=600, kernel_name="python3",
                 resources={"metadata": {"path": str(tmp_path)}}).execute()
  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  assert any("image/png" in o.get("data", {}) for o in outputs)  # it drew its pictures
