"""main.py as a user runs it: quick start, errors as one line, kill -9 and resume, plots."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from conftest import REPO, tiny_config, tiny_overrides

from fedjax_med import experiment
from fedjax_med.checkpoint import Checkpointer


def _main(*args, timeout=300):
  return subprocess.run([sys.executable, "main.py", *args], cwd=REPO, capture_output=True, text=True,
                        timeout=timeout)


def _state(workdir, round_num=None):
  exp = experiment.build(tiny_config())
  server, clients = experiment.initial_state(exp)
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"))
  state, _ = checkpointer.restore(round_num or checkpointer.latest_round(), experiment.state_tree(server, clients))
  checkpointer.close()
  return state


def test_quickstart_command_trains_logs_and_plots(tmp_path):
  overrides = [o for o in tiny_overrides() if "tensorboard" not in o]
  result = _main("--config", "configs/fedavg.py", *overrides, "--config.num_rounds=4", "--workdir", str(tmp_path))
  assert result.returncode == 0, result.stderr[-2000:]
  assert "Final evaluation on synthetic/test after 4 rounds" in result.stdout
  assert "DATA IS SYNTHETIC" in result.stderr
  assert len(open(tmp_path / "metrics.jsonl").readlines()) == 4
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tensorboard"))
  plot = subprocess.run([sys.executable, "-m", "fedjax_med.plot", str(tmp_path)], cwd=REPO, capture_output=True,
                        text=True, timeout=120)
  assert plot.returncode == 0, plot.stderr
  for name in ("curves_train.png", "curves_eval.png"):
    assert (tmp_path / name).stat().st_size > 5000


KILLER = textwrap.dedent("""
    import os, signal, sys, threading
    sys.path.insert(0, os.getcwd())
    from fedjax_med import checkpoint, train
    from tests.conftest import tiny_config
    save = checkpoint.Checkpointer.save
    def save_then_die(self, round_num, state, record):
      if round_num == 3:  # SIGKILL while round 3 is being written
        threading.Timer(0.02, lambda: os.kill(os.getpid(), signal.SIGKILL)).start()
      save(self, round_num, state, record)
    checkpoint.Checkpointer.save = save_then_die
    train.run(tiny_config(), sys.argv[1])
""")


def test_killed_during_a_checkpoint_write_then_resumed_equals_a_straight_run(tmp_path):
  straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
  result = _main("--config", "configs/fedavg.py", *tiny_overrides(), "--config.num_rounds=4", "--workdir", straight)
  assert result.returncode == 0, result.stderr[-2000:]
  died = subprocess.run([sys.executable, "-c", KILLER, killed], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert died.returncode == -9, died.stderr[-2000:]
  last_good = Checkpointer(os.path.join(killed, "checkpoints")).latest_round()
  assert last_good in (2, 3)
  _state(killed, last_good)  # the last good checkpoint restores
  result = _main("--config", "configs/fedavg.py", *tiny_overrides(), "--config.num_rounds=4", "--workdir", killed)
  assert result.returncode == 0, result.stderr[-2000:]
  for a, b in zip(jax.tree.leaves(_state(straight)), jax.tree.leaves(_state(killed))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  rounds = [json.loads(line)["round"] for line in open(os.path.join(killed, "metrics.jsonl"))]
  assert rounds == [1, 2, 3, 4]


def test_a_half_written_checkpoint_directory_is_ignored(tmp_path):
  result = _main("--config", "configs/fedavg.py", *tiny_overrides(), "--config.num_rounds=2",
                 "--workdir", str(tmp_path))
  assert result.returncode == 0, result.stderr[-2000:]
  partial = tmp_path / "checkpoints" / "3.orbax-checkpoint-tmp-1234"
  partial.mkdir()
  (partial / "junk").write_text("interrupted write")
  assert Checkpointer(str(tmp_path / "checkpoints")).latest_round() == 2


@pytest.mark.parametrize("args,message", [
    (["--config.client.lerning_rate=0.1"],
     "error: unknown config key 'client.lerning_rate' in --config.client.lerning_rate=0.1; keys allowed under "
     "config.client: ['batch_size', 'learning_rate'"),
    (["--config.client.learning_rate=abc"], "error: bad value in --config.client.learning_rate=abc"),
    (["--config.execution.strategy=fast"], "error: config.execution.strategy='fast' is not allowed; allowed: "),
    (["--config.data.name=drive", "--config.data.root=/nonexistent/drive"],
     "error: dataset directory /nonexistent/drive does not exist; prepare it with: python -m fedjax_med.data.prepare "
     "drive"),
    (["--config.data.name=drive", "--config.data.root=/nonexistent/drive/drive.npz"],
     "error: /nonexistent/drive/drive.npz does not exist. It is one of the team's compact files: set "
     "FEDJAX_MED_DATA to the folder holding drive/drive.npz, or prepare the original download with: python -m "
     "fedjax_med.data.prepare drive --raw RAW_DOWNLOAD_DIR --out prepared/drive and pass "
     "--config.data.root=prepared/drive\n"),
    (["--config.data.batch_mode=patches", "--config.data.patch_size=64"],
     "error: config.data.patch_size=64 does not fit the 32x32 images of dataset 'synthetic'; set "
     "--config.data.patch_size to 1..32, or --config.data.batch_mode=images to train on whole images\n"),
])
def test_bad_command_lines_give_one_error_line(tmp_path, args, message):
  result = _main("--config", "configs/fedavg.py", *args, "--workdir", str(tmp_path / "w"), timeout=120)
  assert result.returncode == 2
  assert message in result.stderr, result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  assert not os.path.exists(tmp_path / "w" / "checkpoints")


def test_missing_config_file_is_named():
  result = _main("--config", "configs/no_such_config.py", timeout=60)
  assert result.returncode == 2 and "error: config file not found: configs/no_such_config.py" in result.stderr


def _read_only_command(folder):
  """A command prefix under which ``folder`` is read-only: its mode 0555 for a normal user; for root (whom modes do
  not stop) a read-only bind mount in a private mount namespace. None when neither is possible here."""
  import shutil

  if os.geteuid() != 0:
    os.chmod(folder, 0o555)
    return []
  script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" "$0" && exec "$@"'
  prefix = ["unshare", "-m", "sh", "-c", script, str(folder)]
  if shutil.which("unshare") is None or subprocess.run([*prefix, "true"], capture_output=True).returncode != 0:
    return None
  return prefix


def test_read_only_workdir_is_one_error_line_before_any_work(tmp_path):
  folder = tmp_path / "ro"
  folder.mkdir()
  prefix = _read_only_command(folder)
  if prefix is None:
    pytest.skip("cannot make a read-only folder here (root without mount namespaces)")
  result = subprocess.run([*prefix, sys.executable, "main.py", "--config", "configs/fedavg.py", "--workdir",
                           str(folder / "run")], cwd=REPO, capture_output=True, text=True, timeout=120)
  os.chmod(folder, 0o755)
  assert result.returncode == 2, result.stderr[-2000:]
  reason = "is on a read-only file system" if prefix else "is not writable by this user"
  assert result.stderr.endswith(f"error: workdir {folder}/run cannot be written: {folder} {reason}; pass --workdir "
                                "DIR on a writable disk\n"), result.stderr[-2000:]
  assert "Traceback" not in result.stderr and "DATA IS SYNTHETIC" not in result.stderr  # before the data is built
  assert os.listdir(folder) == []


def test_workdir_under_a_file_is_one_error_line(tmp_path):
  (tmp_path / "afile").write_text("")
  result = _main("--config", "configs/fedavg.py", "--workdir", str(tmp_path / "afile" / "run"), timeout=120)
  assert result.returncode == 2 and result.stderr.endswith(
      f"error: workdir {tmp_path}/afile/run cannot be created: {tmp_path}/afile is a file, not a folder; pass "
      "another --workdir\n"), result.stderr[-2000:]


def test_workdir_failing_during_the_run_is_one_error_line(tmp_path, monkeypatch, capsys):
  import errno

  from fedjax_med import cli, train

  def full_disk(config, workdir):
    raise OSError(errno.ENOSPC, "No space left on device", os.path.join(workdir, "checkpoints", "3"))

  monkeypatch.setattr(train, "run", full_disk)
  assert cli.main(tiny_config(), str(tmp_path / "w"), "configs/fedavg.py") == 2
  assert capsys.readouterr().err == (f"error: cannot write {tmp_path}/w/checkpoints/3: No space left on device; free "
                                     "space or pass --workdir DIR on a writable disk (the run resumes from its last "
                                     "checkpoint)\n")

  def elsewhere(config, workdir):
    raise OSError(errno.ENOSPC, "No space left on device", "/somewhere/else")

  monkeypatch.setattr(train, "run", elsewhere)
  with pytest.raises(OSError):  # not the workdir: a real failure keeps its traceback
    cli.main(tiny_config(), str(tmp_path / "w"), "configs/fedavg.py")


def test_segmentation_config_on_a_classification_dataset_is_one_error_line(tmp_path, data_root):
  root = os.path.join(data_root, "pneumoniamnist", "pneumoniamnist_28.npz")
  result = _main("--config", "configs/fedavg_drive.py", "--config.data.name=pneumoniamnist",
                 f"--config.data.root={root}", "--workdir", str(tmp_path / "w"), timeout=120)
  assert result.returncode == 2 and result.stderr.endswith(
      f"error: config.task.name='segmentation' needs segmentation masks, but dataset 'pneumoniamnist' ({root}) has "
      "none: it is a classification dataset (columns: group, images, labels, site, split); run a classification "
      "config on it (e.g. configs/fedavg_ham10000.py), or point config.data.root at a dataset with segmentation "
      "masks\n"), result.stderr[-2000:]
  assert not (tmp_path / "w").exists()
