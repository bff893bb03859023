"""Resumable checkpoints: everything needed to continue a run exactly.

A checkpoint holds the server state (global variables, server optimizer state,
round, base PRNG key, algorithm state) and every client's persistent state, plus
a JSON record of the config and the execution strategy in use. Client selection
and batch sampling are pure functions of (seed, round, client id), so no sampler
state needs saving. Orbax writes each checkpoint into a temporary directory and
renames it when complete, so a crash while writing leaves the last good one intact.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from fedjax_med.engine.types import PyTree


class Checkpointer:
  """Saves and restores ``{"server": ServerState, "clients": {cohort: stacked state}}`` by round."""

  def __init__(self, directory: str, max_to_keep: int = 2):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False)
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "record"))

  def latest_round(self) -> int | None:
    return self.manager.latest_step()

  def save(self, round_num: int, state: PyTree, record: dict[str, Any]) -> None:
    state = jax.device_get(state)
    self.manager.save(round_num, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record)), force=True)
    self.manager.wait_until_finished()

  def restore(self, round_num: int, like: PyTree) -> tuple[PyTree, dict[str, Any]]:
    """Restores the state with the structure, shapes and dtypes of ``like``."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    restored = self.manager.restore(round_num, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), record=ocp.args.JsonRestore()))
    return restored.state, restored.record

  def close(self) -> None:
    self.manager.close()
