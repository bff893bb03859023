"""The notebooks run top to bottom (their code cells, without shell / magic lines) on the embedded data."""

import json
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(f for f in os.listdir(os.path.join(REPO, "notebooks")) if f.endswith(".ipynb"))


def code_of(path: str) -> str:
  """The notebook's code cells joined, minus lines that are IPython magics or shell escapes."""
  with open(path) as f:
    cells = json.load(f)["cells"]
  lines = [line for cell in cells if cell["cell_type"] == "code" for line in "".join(cell["source"]).splitlines()
           if not line.lstrip().startswith(("%", "!"))]
  return "\n".join(lines)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, monkeypatch, tmp_path):
  monkeypatch.chdir(os.path.join(REPO, "notebooks"))
  monkeypatch.setenv("TMPDIR", str(tmp_path))
  namespace = {"__name__": "__main__"}
  exec(compile(code_of(os.path.join(REPO, "notebooks", name)), name, "exec"), namespace)  # noqa: S102
  if name == "fedirm_quickstart.ipynb":
    for mode in ("fedirm", "lower"):
      assert os.path.exists(os.path.join(namespace["runs"][mode], "results.json"))
    assert os.path.getsize(namespace["heatmaps"]) > 5000 and os.path.getsize(namespace["curves"]) > 5000
  if name == "fcl_quickstart.ipynb":
    for init in ("fcl", "random"):
      assert os.path.exists(os.path.join(namespace["runs"][init], "results.json"))
    assert os.path.getsize(namespace["similarity"]) > 5000 and os.path.getsize(namespace["overlay"]) > 5000
  if name == "fedicra_quickstart.ipynb":
    for mode in ("fedicra", "fedavg_pce"):
      assert os.path.exists(os.path.join(namespace["runs"][mode], "results.json"))
    assert os.path.getsize(namespace["weak"]) > 5000 and os.path.getsize(namespace["predictions"]) > 5000
  if name == "multimix_quickstart.ipynb":
    for arg in ("multimix,20,6", "multimix,20,6,fed"):
      assert os.path.exists(os.path.join(namespace["runs"][arg], "results.json"))
    assert os.path.getsize(namespace["saliency"]) > 5000
