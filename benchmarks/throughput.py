"""Throughput of a federated round: fedjax_med against a PyTorch loop in the official codes' style and Flower.

  python -m benchmarks.throughput --workload fedirm [--rounds 5] [--out DIR]
  python -m benchmarks.throughput --workload scaling --clients 1 2 4 8 16 32 64
  python -m benchmarks.throughput --workload drive_unet --contenders jax:auto torch flower

Every contender runs in its own worker process (``benchmarks.worker``). The harness first measures this
machine's fp32 matmul peak, then starts the contenders one after another (set-up and first round, which holds
compilation / Ray start-up, timed alone), then times ``--rounds`` rounds alternating the contenders round by
round so that machine noise hits all alike, and reports medians: s/round, images/s (training examples per
second), speed-up of each fedjax_med strategy over each peer, achieved GFLOP/s (XLA's cost analysis of the
round, fedjax_med only) and its fraction of the matmul peak, first-round time, peak resident memory (the
worker and its descendants). Workloads are described in ``benchmarks/workloads.py``; how to read the numbers
in ``benchmarks/README.md``. Writes ``DIR/WORKLOAD.json`` and ``DIR/WORKLOAD.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import select
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from benchmarks import workloads
from benchmarks.worker import MARK

JAX_STRATEGIES = ("auto", "sequential", "stepwise", "unrolled", "vmap")


class Worker:
  """A contender's process: ``request`` sends one command line and waits (bounded) for its ``BENCH`` answer."""

  def __init__(self, spec: dict[str, Any], timeout_s: float):
    self.name, self.timeout_s = spec["contender"], timeout_s
    self.stderr = tempfile.TemporaryFile(mode="w+")
    self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks.worker", json.dumps(spec)],
                                 cwd=workloads.REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=self.stderr, text=True, bufsize=1)

  def read(self) -> dict[str, Any]:
    deadline = time.monotonic() + self.timeout_s
    while True:
      remaining = deadline - time.monotonic()
      if remaining <= 0:
        self.kill()
        raise TimeoutError(f"contender {self.name} gave no answer within {self.timeout_s:.0f} s")
      ready, _, _ = select.select([self.proc.stdout], [], [], remaining)
      if not ready:
        continue
      line = self.proc.stdout.readline()
      if not line:
        self.stderr.seek(0)
        tail = self.stderr.read()[-3000:]
        raise RuntimeError(f"contender {self.name} exited (status {self.proc.wait()}):\n{tail}")
      if line.startswith(MARK):
        return json.loads(line[len(MARK):])

  def request(self, command: str) -> dict[str, Any]:
    self.proc.stdin.write(command + "\n")
    self.proc.stdin.flush()
    return self.read()

  def kill(self) -> None:
    if self.proc.poll() is None:
      self.proc.kill()
      self.proc.wait()


def default_contenders(workload: workloads.Workload) -> list[str]:
  return [f"jax:{s}" for s in JAX_STRATEGIES] + ["torch"] + (["flower"] if workload.torch_task else [])


def measure_peak(rounds: int, timeout_s: float) -> dict[str, Any]:
  worker = Worker({"contender": "peak", "rounds": rounds}, timeout_s)
  try:
    worker.read()
    for _ in range(rounds):
      worker.request("round")
    return worker.request("info")
  finally:
    worker.kill()


def run_contenders(workload: str, contenders: list[str], rounds: int, smoke: bool, clients: int,
                   timeout_s: float, torch_threads: int, compilation_cache: str = "") -> dict[str, dict[str, Any]]:
  """Set-up and first round of each contender alone, then ``rounds`` alternating rounds; returns raw results.
  ``compilation_cache``: a directory for XLA's persistent compilation cache of the JAX contenders ("" = none)."""
  results, workers = {}, {}
  try:
    for name in contenders:
      spec = {"workload": workload, "contender": name, "smoke": smoke, "clients": clients, "rounds": rounds,
              "torch_threads": torch_threads, "compilation_cache": compilation_cache}
      workers[name] = worker = Worker(spec, timeout_s)
      setup = worker.read()
      first = worker.request("round")
      results[name] = {"setup_s": setup["setup_s"], "first_round_s": first["round_s"], "rounds_s": []}
      print(f"  {name}: set-up {setup['setup_s']:.1f} s, first round {first['round_s']:.2f} s", flush=True)
    for _ in range(rounds):
      for name, worker in workers.items():
        results[name]["rounds_s"].append(worker.request("round")["round_s"])
    for name, worker in workers.items():
      results[name]["info"] = worker.request("info")
  finally:
    for worker in workers.values():
      worker.kill()
  return results


def summarise(raw: dict[str, dict[str, Any]], examples: int, peak: float) -> dict[str, dict[str, Any]]:
  rows = {}
  for name, r in raw.items():
    median = statistics.median(r["rounds_s"])
    info = r["info"]
    row = {"s_per_round": median, "images_per_s": examples / median, "first_round_s": r["first_round_s"],
           "setup_s": r["setup_s"], "peak_rss_mb": info["peak_rss_mb"], "rounds_s": r["rounds_s"], "info": info}
    if "flops_per_round" in info:
      row["gflops"] = info["flops_per_round"] / median / 1e9
      row["fraction_of_peak"] = row["gflops"] / peak
    rows[name] = row
  for name, row in rows.items():
    if name.startswith("jax:"):
      row["speedup"] = {peer: rows[peer]["s_per_round"] / row["s_per_round"] for peer in ("torch", "flower")
                        if peer in rows}
  return rows


def markdown(result: dict[str, Any]) -> str:
  lines = [f"### {result['workload']}: {result['protocol']}", "",
           f"{result['rounds']} alternating rounds after one first round, medians; machine: {result['machine']}; "
           f"fp32 matmul peak {result['peak_gflops']:.0f} GFLOP/s.{cache_note(result)}", ""]
  for clients, rows in result["runs"].items():
    if len(result["runs"]) > 1:
      lines += [f"**{clients} clients**", ""]
    lines += ["| contender | s/round | images/s | x torch | x flower | GFLOP/s | % of peak | first round s | "
              "peak RSS MB |", "|---|---|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
      label = name + (f" ({row['info']['strategy']})" if name == "jax:auto" else "")
      speed = row.get("speedup", {})
      cell = lambda v, fmt: fmt.format(v) if v is not None else ""
      lines.append(f"| {label} | {row['s_per_round']:.3f} | {row['images_per_s']:.0f} | "
                   f"{cell(speed.get('torch'), '{:.2f}')} | {cell(speed.get('flower'), '{:.2f}')} | "
                   f"{cell(row.get('gflops'), '{:.1f}')} | {cell(row.get('fraction_of_peak'), '{:.0%}')} | "
                   f"{row['first_round_s']:.1f} | {row['peak_rss_mb']:.0f} |")
    lines.append("")
  return "\n".join(lines)


def cache_state(path: str) -> dict[str, Any]:
  """Whether the JAX contenders use a persistent compilation cache, and how many entries it held at the start
  (0: their first rounds compile cold)."""
  entries = len(os.listdir(path)) if path and os.path.isdir(path) else 0
  return {"dir_given": bool(path), "entries_at_start": entries}


def cache_note(result: dict[str, Any]) -> str:
  cache = result.get("compilation_cache", {})
  if not cache.get("dir_given"):
    return " No persistent compilation cache: first rounds compile cold."
  entries = cache["entries_at_start"]
  return f" Persistent compilation cache with {entries} entries at the start ({'warm' if entries else 'cold'})."


def machine() -> str:
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    pass
  return f"{cpu}, {os.cpu_count()} cores"


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workload", required=True, choices=workloads.WORKLOADS)
  parser.add_argument("--clients", type=int, nargs="+", default=[0],
                      help="scaling workload: client counts to sweep (others: their fixed count)")
  parser.add_argument("--contenders", nargs="+", default=None,
                      help="jax:auto jax:sequential jax:stepwise jax:unrolled jax:vmap torch flower (default: all "
                           "that apply)")
  parser.add_argument("--rounds", type=int, default=5, help="timed rounds per contender after the first (>= 5)")
  parser.add_argument("--smoke", action="store_true", help="tiny sizes on synthetic data (the test suite's run)")
  parser.add_argument("--timeout", type=float, default=1800.0, help="seconds any one answer of a contender may take")
  parser.add_argument("--torch-threads", type=int, default=0, help="torch.set_num_threads (0: PyTorch's default)")
  parser.add_argument("--compilation-cache", default="",
                      help="XLA persistent compilation cache directory for the JAX contenders (default: none, every "
                           "run compiles cold; run twice with the same DIR to time a warm-cache first round)")
  parser.add_argument("--out", default="benchmarks/results")
  args = parser.parse_args(argv)
  if args.workload == "scaling" and args.clients == [0]:
    args.clients = [1, 2, 4, 8, 16, 32, 64]
  if args.workload != "scaling" and args.clients != [0]:
    parser.error(f"--clients applies to the scaling workload; {args.workload} has a fixed client count")
  first = workloads.get(args.workload, args.smoke, args.clients[0], args.rounds)
  contenders = args.contenders or default_contenders(first)
  print("measuring the fp32 matmul peak ...", flush=True)
  peak = measure_peak(5, args.timeout)
  result = {"workload": args.workload, "protocol": first.protocol, "rounds": args.rounds, "smoke": args.smoke,
            "machine": machine(), "peak": peak, "peak_gflops": peak["peak_gflops"], "contenders": contenders,
            "compilation_cache": cache_state(args.compilation_cache),
            "command": "python -m benchmarks.throughput " + " ".join(argv if argv is not None else sys.argv[1:]),
            "runs": {}}
  for clients in args.clients:
    workload = workloads.get(args.workload, args.smoke, clients, args.rounds)
    print(f"{args.workload}, {workload.protocol['clients']} clients:", flush=True)
    raw = run_contenders(args.workload, contenders, args.rounds, args.smoke, clients, args.timeout,
                         args.torch_threads, args.compilation_cache)
    result["runs"][str(workload.protocol["clients"])] = summarise(raw, workload.examples_per_round,
                                                                  peak["peak_gflops"])
  write_report(result, markdown(result), args.out, args.workload + ("_smoke" if args.smoke else ""))
  return 0


def write_report(result: dict[str, Any], table: str, out: str, stem: str) -> None:
  """Prints the markdown table and writes ``out/stem.json`` (everything measured) and ``out/stem.md``."""
  print("\n" + table)
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, f"{stem}.json"), "w") as f:
    json.dump(result, f, indent=1)
  with open(os.path.join(out, f"{stem}.md"), "w") as f:
    f.write(table)


if __name__ == "__main__":
  sys.exit(main())
