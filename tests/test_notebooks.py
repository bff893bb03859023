"""The notebooks run top to bottom (their code cells, without shell / magic lines) on the embedded data, in the
repository and from an installed wheel (as on Colab: no checkout, ``configs`` from the package)."""

import json
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(f for f in os.listdir(os.path.join(REPO, "notebooks")) if f.endswith(".ipynb"))


def code_cells(path: str) -> list[str]:
  """The notebook's code cells, minus lines that are IPython magics or shell escapes."""
  with open(path) as f:
    cells = json.load(f)["cells"]
  return ["\n".join(line for line in "".join(cell["source"]).splitlines() if not line.lstrip().startswith(("%", "!")))
          for cell in cells if cell["cell_type"] == "code"]


def code_of(path: str) -> str:
  """The notebook's code cells joined, minus lines that are IPython magics or shell escapes."""
  return "\n".join(code_cells(path))


# fedirm_quickstart runs in test_notebook_runs_from_an_installed_wheel instead (the harder case: the same code cells
# with the package from a wheel), so that the suite runs each notebook once.
WHEEL_NOTEBOOK = "fedirm_quickstart.ipynb"


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in NOTEBOOKS if n != WHEEL_NOTEBOOK])
def test_notebook_runs(name, monkeypatch, tmp_path):
  monkeypatch.chdir(os.path.join(REPO, "notebooks"))
  monkeypatch.setenv("TMPDIR", str(tmp_path))
  namespace = {"__name__": "__main__"}
  exec(compile(code_of(os.path.join(REPO, "notebooks", name)), name, "exec"), namespace)  # noqa: S102
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


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_does_not_put_the_repo_on_sys_path(name):
  assert "sys.path" not in code_of(os.path.join(REPO, "notebooks", name))


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_setup_cell_without_the_package_prints_the_pip_command(name, tmp_path):
  # -I -S: no site-packages (so no fedjax_med) and no PYTHON* variables; the working folder is no checkout.
  setup = code_cells(os.path.join(REPO, "notebooks", name))[0]
  done = subprocess.run([sys.executable, "-I", "-S", "-c", setup], cwd=tmp_path, capture_output=True, text=True,
                        timeout=60)
  assert done.returncode == 0, done.stderr
  assert done.stdout.count("\n") == 1 and "pip install" in done.stdout and "git+https://" in done.stdout, done.stdout


def build_wheel(out: str) -> str:
  """A wheel of the working tree (``pip wheel``), built from a copy so that no build/ folder goes into the repo."""
  source = os.path.join(out, "source")
  for name in ("fedjax_med", "configs"):
    shutil.copytree(os.path.join(REPO, name), os.path.join(source, name),
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
  for name in ("pyproject.toml", "README.md"):
    shutil.copy(os.path.join(REPO, name), source)
  subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", out, source],
                 check=True, timeout=300)
  (wheel,) = [f for f in os.listdir(out) if f.endswith(".whl")]
  return os.path.join(out, wheel)


REPORT = """
import json as _json
import configs as _configs
import fedjax_med as _fedjax_med
print(_json.dumps({"fedjax_med": _fedjax_med.__file__, "configs": _configs.__file__, "sys_path": sys.path,
                   "runs": runs, "figures": [os.path.abspath(heatmaps), os.path.abspath(curves)]}))
"""


@pytest.mark.slow
def test_notebook_runs_from_an_installed_wheel(tmp_path):
  """fedirm_quickstart (the cheapest notebook) top to bottom, with fedjax_med and configs from a wheel installed in
  TMP/site and the repository on no path: what a Colab session has after ``%pip install``."""
  site = tmp_path / "site"
  wheel = build_wheel(str(tmp_path / "wheel"))
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), wheel], check=True,
                 timeout=300)
  run = tmp_path / "run"
  run.mkdir()
  script = run / "notebook.py"
  script.write_text(code_of(os.path.join(REPO, "notebooks", WHEEL_NOTEBOOK)) + "\n" + REPORT)
  env = {**os.environ, "PYTHONPATH": str(site), "TMPDIR": str(run)}
  done = subprocess.run([sys.executable, str(script)], cwd=run, env=env, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  report = json.loads(done.stdout.strip().splitlines()[-1])
  for module in ("fedjax_med", "configs"):
    assert os.path.realpath(report[module]).startswith(os.path.realpath(site) + os.sep), report[module]
  repo = os.path.realpath(REPO)
  assert not [p for p in report["sys_path"] if os.path.realpath(p or run) == repo], report["sys_path"]
  for mode in ("fedirm", "lower"):
    assert os.path.exists(os.path.join(report["runs"][mode], "results.json"))
  assert all(os.path.getsize(figure) > 5000 for figure in report["figures"])  # heatmaps and curves
