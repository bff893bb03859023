import json
import os

import numpy as np
import pytest

from fedjax_med import report


def _fake_run(root, name, auroc, seconds=(1.0, 2.0)):
  workdir = os.path.join(root, name)
  os.makedirs(workdir)
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump({"rounds": 3, "strategy": "stepwise", "eval": {"macro_auroc": auroc}}, f)
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    for i, s in enumerate(seconds):
      f.write(json.dumps({"round": i + 1, "seconds": s}) + "\n")
  return workdir


def test_over_seeds_gives_mean_and_sample_std_per_run(tmp_path, capsys):
  dirs = [_fake_run(tmp_path, f"lower_s{s}", a) for s, a in enumerate([0.7, 0.8, 0.9])]
  dirs.append(_fake_run(tmp_path, "fedirm_s0", 0.75))
  assert report.main([*dirs, "--metrics", "macro_auroc", "--over-seeds"]) == 0
  lines = capsys.readouterr().out.splitlines()
  lower = next(line for line in lines if line.startswith("| lower "))
  expected = f"{np.mean([0.7, 0.8, 0.9]):.4f} ± {np.std([0.7, 0.8, 0.9], ddof=1):.4f}"
  assert expected == "0.8000 ± 0.1000"
  assert f"| lower | {expected} | 0,1,2 | 3 | 0 | 3 | stepwise |" == lower
  assert "| fedirm | 0.7500 | 0 |" in next(line for line in lines if line.startswith("| fedirm "))


def test_over_seeds_rejects_a_workdir_without_seed_suffix(tmp_path, capsys):
  d = _fake_run(tmp_path, "lower", 0.7)
  assert report.main([d, "--over-seeds", "--metrics", "macro_auroc"]) == 2
  assert "lower" in capsys.readouterr().err


def test_seed_groups_keep_first_seen_order():
  rows = [{"run": "b_s0"}, {"run": "a_s0"}, {"run": "b_s1"}]
  assert list(report.seed_groups(rows)) == ["b", "a"]
  with pytest.raises(ValueError, match="nope"):
    report.seed_groups([{"run": "nope"}])


def _with_evals(workdir, values):
  with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
    for r, v in values:
      f.write(json.dumps({"round": r, "seconds": 0.0, "eval": {"macro_auroc": v}}) + "\n")


def test_compare_plot_over_seeds_draws_one_mean_line_per_run(tmp_path, monkeypatch):
  from fedjax_med import plot

  dirs = []
  for s, vals in enumerate([[(2, 0.6), (4, 0.8)], [(2, 0.7), (4, 0.9)]]):
    dirs.append(_fake_run(tmp_path, f"lower_s{s}", 0.0, seconds=()))
    _with_evals(dirs[-1], vals)
  drawn = []
  real_plot = plot.plt.Axes.plot
  monkeypatch.setattr(plot.plt.Axes, "plot", lambda ax, x, y, **kw: drawn.append((list(x), list(y), kw["label"]))
                      or real_plot(ax, x, y, **kw))
  out = plot.plot_compare(dirs, "macro_auroc", str(tmp_path / "c.png"), over_seeds=True)
  assert os.path.getsize(out) > 0
  (rounds, mean, label), = drawn
  assert rounds == [2, 4] and np.allclose(mean, [0.65, 0.85]) and label == "lower (n=2)"


def test_class_names_come_from_results_json(tmp_path):
  from fedjax_med import plot

  assert plot.class_names(str(tmp_path)) is None  # not finished yet
  with open(tmp_path / "results.json", "w") as f:
    json.dump({"class_names": ["nv", "mel"]}, f)
  assert plot.class_names(str(tmp_path)) == ["nv", "mel"]


def test_sweep_plot_takes_x_from_the_config_and_averages_seeds(tmp_path, monkeypatch):
  from fedjax_med import plot

  dirs = []
  for method, values in (("ft_fcl", {1: (0.5, 0.7), 4: (0.8, 0.8)}), ("ft_random", {1: (0.2, 0.4), 4: (0.6, 0.8)})):
    for n, per_seed in values.items():
      for seed, dice in enumerate(per_seed):
        workdir = tmp_path / f"{method}_n{n}_s{seed}"
        workdir.mkdir()
        (workdir / "results.json").write_text(json.dumps({"eval": {"dice3d": dice}}))
        (workdir / "config_full.json").write_text(json.dumps({"partition": {"groups_per_client": n}}))
        dirs.append(str(workdir))
  drawn = []
  real = plot.plt.Axes.errorbar
  monkeypatch.setattr(plot.plt.Axes, "errorbar",
                      lambda ax, x, y, **kw: drawn.append((x, y, kw)) or real(ax, x, y, **kw))
  out = plot.plot_sweep(dirs, "dice3d", "partition.groups_per_client", str(tmp_path / "s.png"))
  assert os.path.getsize(out) > 0
  (x0, y0, kw0), (x1, y1, kw1) = drawn
  assert x0 == [1.0, 4.0] and np.allclose(y0, [0.6, 0.8]) and kw0["label"] == "ft_fcl (seeds 2)"
  assert np.allclose(kw0["yerr"], [np.std([0.5, 0.7], ddof=1), 0.0])
  assert np.allclose(y1, [0.3, 0.7]) and kw1["label"].startswith("ft_random")
  with pytest.raises(ValueError, match="no config key 'model.width'"):
    plot.plot_sweep(dirs, "dice3d", "model.width", str(tmp_path / "t.png"))


def test_paired_baseline_gives_the_mean_difference_and_a_t_interval(tmp_path, capsys):
  base = [0.70, 0.80, 0.90]
  other = [0.72, 0.83, 0.91]  # differences 0.02, 0.03, 0.01: mean 0.02, sd 0.01
  dirs = [_fake_run(tmp_path, f"base_s{s}", a) for s, a in enumerate(base)]
  dirs += [_fake_run(tmp_path, f"new_s{s}", a) for s, a in enumerate(other)]
  dirs.append(_fake_run(tmp_path, "solo_s5", 0.5))  # no seed in common with the baseline
  dirs.append(_fake_run(tmp_path, "one_s1", 0.85))  # one seed in common: a difference, no interval
  assert report.main([*dirs, "--metrics", "macro_auroc", "--over-seeds", "--paired-baseline", "base"]) == 0
  out = capsys.readouterr().out
  half = 4.302652729911275 * 0.01 / np.sqrt(3)  # t(0.975, 2) from tables
  assert f"| new | +0.0200 [{0.02 - half:+.4f}, {0.02 + half:+.4f}] | 3 |" in out
  assert "| solo | n/a | 0 |" in out
  assert "| one | +0.0500 (1 pair, no CI) | 1 |" in out
  assert report.main([*dirs, "--metrics", "macro_auroc", "--paired-baseline", "base"]) == 2
  assert report.main([*dirs, "--metrics", "macro_auroc", "--over-seeds", "--paired-baseline", "nope"]) == 2


def test_round_reads_the_evaluation_logged_at_that_round(tmp_path, capsys):
  workdir = _fake_run(tmp_path, "long_s0", 0.9)
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:  # replaced: three rounds, evaluated at 2 and 3
    for r, (s, auroc) in enumerate([(1.0, None), (2.0, 0.6), (4.0, 0.9)], start=1):
      f.write(json.dumps({"round": r, "seconds": s, **({"eval": {"macro_auroc": auroc}} if auroc else {})}) + "\n")
  assert report.main([workdir, "--metrics", "macro_auroc", "--round", "2"]) == 0
  assert "| long_s0 | 0.6000 | 2 | 0 | 3 | stepwise |" in capsys.readouterr().out  # seconds of rounds 1-2
  assert report.main([workdir, "--metrics", "macro_auroc"]) == 0
  assert "| long_s0 | 0.9000 | 3 | 0 | 7 | stepwise |" in capsys.readouterr().out
  assert report.main([workdir, "--metrics", "macro_auroc", "--round", "1"]) == 2
  assert "no evaluation at round 1; evaluated rounds: [2, 3]" in capsys.readouterr().err
