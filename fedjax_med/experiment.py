"""Builds a run from its config: data, partition, model, task, algorithm, device data, initial state."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fedjax_med import models, tasks
from fedjax_med.algorithms import check_config as check_algorithm_config
from fedjax_med.algorithms import get_algorithm
from fedjax_med.data import budgets, partition, resize, tfds_source, volumes, weak_labels
from fedjax_med.data.format import PreparedDataset
from fedjax_med.data.pipeline import TRAIN_KEYS, cohort_data, make_batch_fn
from fedjax_med.data.sources import load_dataset
from fedjax_med.data.streaming import RowSource, StreamedCohort
from fedjax_med.engine import privacy
from fedjax_med.engine.execution import CohortData, LocalPlan
from fedjax_med.engine.types import FederatedAlgorithm, PyTree, ServerState
from fedjax_med.evaluation import make_predict
from fedjax_med.models.multimix import MultiMixNet


@dataclasses.dataclass
class Experiment:
  """Everything a run needs, built once from the config."""

  config: ml_collections.ConfigDict
  meta: dict
  client_datasets: list  # PreparedDataset per client (or lazy sources for TFDS)
  eval_dataset: PreparedDataset
  cohorts: dict[str, list[int]]          # cohort -> global client ids
  model: object
  task: tasks.Task
  variables: PyTree
  algorithm: FederatedAlgorithm
  data: dict[str, CohortData]
  plans: dict[str, LocalPlan]
  batch_fns: dict[str, Callable]
  streamed: dict[str, StreamedCohort] = dataclasses.field(default_factory=dict)
  dp: privacy.DPConfig | None = None
  cls_eval_dataset: PreparedDataset | None = None  # multitask with data.cls_source: where classification is scored
  select_dataset: PreparedDataset | None = None  # eval.select_on: the split the best global model is chosen on
  # jitted (variables, uint8 images) -> the task's prediction (evaluation.make_predict), one program per run;
  # predict_seg: multitask's segmentation output (None for the other tasks)
  predict: Callable | None = None
  predict_seg: Callable | None = None

  def data_for_round(self, round_num: int) -> dict[str, CohortData]:
    """The cohorts' data: device-resident, or this round's batches read through grain."""
    return {name: self.streamed[name].data_for_round(round_num) if name in self.streamed else self.data[name]
            for name in self.cohorts}


def select_channels(dataset: PreparedDataset, channels: tuple[int, ...]) -> PreparedDataset:
  if not channels:
    return dataset
  arrays = dict(dataset.arrays)
  arrays["images"] = arrays["images"][..., list(channels)]
  return PreparedDataset(arrays, dataset.meta)


EXAMPLE_CONFIGS = {"classification": "configs/fedavg_ham10000.py", "segmentation": "configs/fedavg_drive.py"}


def check_data_fits(config: ml_collections.ConfigDict, dataset: PreparedDataset) -> None:
  """Raises ValueError (one line naming the key, the dataset and what to change) when the config asks the data for
  channels it lacks, or its task for labels the data does not have."""
  where = f"dataset {config.data.name!r}" + (f" ({config.data.root})" if config.data.root else "")
  meta = dataset.meta
  labels = dataset.has("labels") and bool((dataset.arrays["labels"] >= 0).any()) and meta.get("num_classes", 0) > 0
  masks = dataset.has("masks") and meta.get("num_mask_classes", 0) > 0
  weak = (dataset.has("scribbles") or dataset.has("masks")) and meta.get("num_mask_classes", 0) > 0
  task = config.task.name
  what = tasks.get_task(task).needs(config, tasks.LabelsPresent(labels, masks, weak))
  if what:
    raise ValueError(_missing_labels_message(task, what, where, dataset, labels, masks))
  num_channels = dataset.arrays["images"].shape[-1]
  channels = tuple(config.data.channels)
  if any(not 0 <= c < num_channels for c in channels):
    raise ValueError(f"config.data.channels={channels} picks channels its images do not have: the images of {where} "
                     f"have {num_channels} channel(s); pick from 0..{num_channels - 1}, or () for all")


def _missing_labels_message(task: str, what: str, where: str, dataset: PreparedDataset, labels: bool,
                            masks: bool) -> str:
  kind = "classification" if labels else "segmentation" if masks else ""
  has = f"it is a {kind} dataset" if kind else "it has neither class labels nor masks"
  fix = f"run a {kind} config on it (e.g. {EXAMPLE_CONFIGS[kind]}), or " if kind else ""
  return (f"config.task.name={task!r} needs {what}, but {where} has none: {has} (columns: "
          f"{', '.join(sorted(dataset.arrays))}); {fix}point config.data.root at a dataset with {what}")


def check_patch_size(config: ml_collections.ConfigDict, image_shape: tuple[int, ...]) -> None:
  """Raises ValueError when ``data.batch_mode='patches'`` asks for patches larger than the images."""
  if config.data.batch_mode != "patches":
    return
  height, width = image_shape[:2]
  if not 0 < config.data.patch_size <= min(height, width):
    after = f" after config.data.downsample={config.data.downsample}" if config.data.downsample > 1 else ""
    raise ValueError(f"config.data.patch_size={config.data.patch_size} does not fit the {height}x{width} images of "
                     f"dataset {config.data.name!r}{after}; set --config.data.patch_size to 1..{min(height, width)}, "
                     "or --config.data.batch_mode=images to train on whole images")


MIN_DEEPEST_SIZE = 4  # config.model.min_deepest_size when a multimix config does not set it (issue 21)


def check_model_depth(config: ml_collections.ConfigDict, image_shape: tuple[int, ...]) -> None:
  """Raises ValueError when MultiMix's U-Net would shrink the images below ``config.model.min_deepest_size``
  pixels a side at its deepest level (0 = no check).

  The encoder halves the images ``len(widths) - 1`` times and instance-normalises its deepest map; the classifier
  max-pools that map and averages it. On a 2x2 map the largest of four standardised values lies in
  [1/sqrt(3), sqrt(3)] = [0.58, 1.73] whatever the image, so the classifier's input carries almost nothing
  (issue 21: 32x32 images with 5 levels; 4 levels gave macro AUROC 0.815 against 0.776).
  """
  if config.model.name != "multimix":
    return
  minimum = config.model.get("min_deepest_size", MIN_DEEPEST_SIZE)
  widths = tuple(config.model.kwargs.get("widths", MultiMixNet.widths))
  height, width = image_shape[:2]
  side, factor = min(height, width), 2 ** (len(widths) - 1)
  if not minimum or side // factor >= minimum:
    return
  levels = 1
  while side // 2 ** levels >= minimum:
    levels += 1
  after = f" (after config.data.downsample={config.data.downsample})" if config.data.downsample > 1 else ""
  raise ValueError(f"config.model.kwargs.widths={widths} has {len(widths)} levels: the deepest map of the "
                   f"{height}x{width} images{after} is {height // factor}x{width // factor}, below "
                   f"config.model.min_deepest_size={minimum} (instance norm over so few pixels leaves the classifier "
                   f"almost no signal); use at most {levels} levels (e.g. --config.model.kwargs.widths="
                   f"'{widths[:levels]}'), larger images, or --config.model.min_deepest_size=0 to allow it")


def partition_rows(train: PreparedDataset, cfg: ml_collections.ConfigDict, seed: int) -> np.ndarray:
  """``client_of_row`` for the training rows by ``cfg.method`` (see data/partition.py)."""
  group = train.arrays["group"]
  if cfg.method == "iid":
    return partition.iid(group, cfg.num_clients, seed)
  if cfg.method == "dirichlet":
    return partition.dirichlet(train.arrays["labels"], group, cfg.num_clients, cfg.alpha, seed)
  if cfg.method == "column":
    if cfg.column not in train.arrays:
      raise ValueError(f"config.partition.column={cfg.column!r} is not a column of the dataset; "
                       f"columns: {sorted(train.arrays)}")
    return partition.by_column(train.arrays[cfg.column], group, tuple(cfg.clients))
  return partition.pooled(len(train))


def client_datasets(train: PreparedDataset, cfg: ml_collections.ConfigDict, seed: int,
                    weak_forms: tuple[str, ...] = (), ignore_index: int = 255) -> list[PreparedDataset]:
  """The training data of each client, labels hidden (-1) outside the labeled rows.

  ``weak_forms`` (one per client, see ``data/weak_labels.py``) replaces each client's ``scribbles`` by its masks in
  that annotation form. Every row gets ``client_index`` (its client's position in the partition).
  """
  client_of_row = partition_rows(train, cfg, seed)
  num_clients = int(client_of_row.max()) + 1
  if cfg.method != "pooled" and num_clients != cfg.num_clients and cfg.method != "column":
    raise ValueError(f"partition produced {num_clients} clients, config.partition.num_clients={cfg.num_clients}")
  if train.has("labels") and (cfg.labeled_clients or cfg.labeled_fraction < 1.0):
    keep = partition.labeled_mask(client_of_row, train.arrays["group"], tuple(cfg.labeled_clients),
                                  cfg.labeled_fraction, seed)
    arrays = dict(train.arrays)
    arrays["labels"] = np.where(keep, arrays["labels"], -1).astype(np.int32)
    train = PreparedDataset(arrays, train.meta)
  clients = [train.select(client_of_row == c) for c in range(num_clients)]
  if cfg.groups_per_client > 0:  # the few-label regime: N labeled patients per client
    clients = [c.select(partition.first_groups(c.arrays["group"], cfg.groups_per_client, seed + i))
               for i, c in enumerate(clients)]
  if weak_forms:
    if len(weak_forms) != len(clients):
      raise ValueError(f"config.data.weak_forms has {len(weak_forms)} forms for {len(clients)} clients")
    clients = [weak_labels.with_weak_labels(c, form, ignore_index, seed + i)
               for i, (c, form) in enumerate(zip(clients, weak_forms))]
  clients = [c.with_column("client_index", np.full(len(c), i, np.int32)) for i, c in enumerate(clients)]
  if cfg.only_client >= 0:  # "each site alone" baseline: one client with that site's data
    clients = [clients[cfg.only_client]]
  return clients


def ignore_index_of(meta: dict) -> int:
  """The label of unannotated pixels in the dataset's weak labels (255 when the dataset does not say)."""
  value = meta.get("ignore_index")
  return 255 if value is None else int(value)


def site_rows(exp: Experiment, client: int) -> tuple[str, np.ndarray]:
  """Client ``client``'s site (its value of the partition column) and the evaluation rows of that site."""
  column = exp.config.partition.column
  if exp.config.partition.method != "column" or column not in exp.eval_dataset.arrays:
    raise ValueError("config.eval.per_client needs config.partition.method='column' (clients = sites) and the "
                     f"column {column!r} in the evaluation split")
  site = str(exp.client_datasets[client].arrays[column][0])
  rows = exp.eval_dataset.arrays[column] == site
  if not rows.any():
    raise ValueError(f"config.eval.per_client: the evaluation split has no rows of site {site!r} (client {client})")
  return site, rows


def build_task(config: ml_collections.ConfigDict, model, data: tasks.TaskData) -> tasks.Task:
  """The config's task, by its registered builder (``tasks.TASKS``)."""
  return tasks.get_task(config.task.name).build(config, model, data)


def tfds_clients(config: ml_collections.ConfigDict):
  """A local TFDS dataset: lazy per-client sources (iid over rows) and the evaluation split in memory."""
  cfg = config.data.tfds
  if config.data.loader != "grain":
    raise ValueError("config.data.name='tfds' reads through grain: set config.data.loader='grain'")
  source = tfds_source.TfdsSource(cfg.name, cfg.train_split, cfg.data_dir, cfg.image_key, cfg.label_key,
                                  cfg.mask_key)
  rows = np.arange(len(source))
  client_of_row = partition.iid(rows.astype(str), config.partition.num_clients, config.seed)
  clients = [tfds_source.Subset(source, rows[client_of_row == c]) for c in range(config.partition.num_clients)]
  eval_source = tfds_source.TfdsSource(cfg.name, cfg.eval_split, cfg.data_dir, cfg.image_key, cfg.label_key,
                                       cfg.mask_key)
  eval_dataset = tfds_source.materialize(eval_source, "test", cfg.name)
  meta = {"name": cfg.name, "num_classes": cfg.num_classes, "num_mask_classes": cfg.num_mask_classes,
          "source": f"tfds:{cfg.name}"}
  return clients, eval_dataset, meta, clients[0][0]["images"].shape


def dp_config(config: ml_collections.ConfigDict, num_clients: int) -> privacy.DPConfig | None:
  """The run's DP-FedAvg settings (None when off); a negative noise multiplier is calibrated to the target ε."""
  cfg = config.privacy
  if not cfg.enabled:
    return None
  per_round = config.aggregation.clients_per_round
  if cfg.sampling == "fixed":
    rate = min(per_round, num_clients) / num_clients if per_round else 1.0
  else:
    if per_round:
      raise ValueError("config.privacy.sampling='poisson' draws the clients itself: set "
                       f"config.aggregation.clients_per_round=0 (got {per_round}) and config.privacy.rate")
    rate = cfg.rate
  dp = privacy.DPConfig(clip=cfg.clip, noise_multiplier=max(cfg.noise_multiplier, 0.0), num_clients=num_clients,
                        sampling=cfg.sampling, rate=rate, unprotected_messages=tuple(cfg.unprotected_messages))
  if cfg.noise_multiplier < 0:
    if cfg.target_epsilon <= 0:
      raise ValueError("config.privacy.noise_multiplier < 0 asks for calibration: set config.privacy.target_epsilon")
    z = privacy.calibrate_noise(cfg.target_epsilon, cfg.delta, config.num_rounds, dp, cfg.accountant,
                                per_round)
    dp = dataclasses.replace(dp, noise_multiplier=z)
  return dp


def with_cls_source(config: ml_collections.ConfigDict,
                    train: PreparedDataset) -> tuple[PreparedDataset, PreparedDataset, dict]:
  """Multitask training rows with ``data.cls_source``'s images as the classification streams (resized to the
  segmentation images, same channels), its evaluation split, and the merged meta."""
  src = config.data.cls_source
  if config.partition.method != "pooled":
    raise ValueError("config.data.cls_source: a second classification dataset is only supported centralised "
                     f"(config.partition.method='pooled'); got {config.partition.method!r}")
  cls_data = load_dataset(src.name, src.root)
  height, width, channels = train.arrays["images"].shape[1:]
  images = cls_data.arrays["images"]
  if images.shape[-1] != channels:  # RGB -> grey by the channel mean; grey -> RGB by repeating it
    images = images.mean(-1, keepdims=True).round().astype(np.uint8) if channels == 1 else \
        np.repeat(images[..., :1], channels, axis=-1)
  cls_data = PreparedDataset({**cls_data.arrays, "images": resize.resize_images(images, (height, width))},
                             cls_data.meta)
  train = budgets.with_classification_stream(train, cls_data.split("train"), config.data.class_budget,
                                             config.data.mask_budget, config.seed)
  cls_eval = cls_data.split(config.data.eval_split)
  if len(cls_eval) == 0:
    raise ValueError(f"config.data.eval_split={config.data.eval_split!r} has no rows in {src.name} ({src.root})")
  return train, cls_eval, train.meta


def build(config: ml_collections.ConfigDict) -> Experiment:
  """Builds the experiment (loads data, partitions, initialises the model, puts client data on device)."""
  check_algorithm_config(config)  # before any data is loaded: keys the algorithm would ignore
  kind = tasks.get_task(config.task.name)
  cls_eval_dataset = select_dataset = train = None
  if config.data.name == "tfds":
    clients, eval_dataset, meta, image_shape = tfds_clients(config)
  else:
    dataset = load_dataset(config.data.name, config.data.root, dict(config.data.synthetic))
    check_data_fits(config, dataset)
    dataset = select_channels(dataset, tuple(config.data.channels))
    dataset = resize.downsample(dataset, config.data.downsample)
    train, eval_dataset, meta = dataset.split("train"), dataset.split(config.data.eval_split), dataset.meta
    if config.eval.select_on:
      select_dataset = dataset.split(config.eval.select_on)
      if len(select_dataset) == 0:
        raise ValueError(f"config.eval.select_on={config.eval.select_on!r} has no rows in {config.data.name}")
    image_shape = train.arrays["images"].shape[1:]
    check_patch_size(config, image_shape)
    if config.data.batch_mode == "volume_partitions":  # one row per volume; partitioned by patient like slices
      train = volumes.to_volumes(train, config.data.num_partitions)
    if config.data.batch_mode == "multitask" and config.data.cls_source.name:
      train, cls_eval_dataset, meta = with_cls_source(config, train)
    elif config.data.batch_mode == "multitask":  # label budgets drawn once, before the clients are formed
      train = budgets.apply_budgets(train, config.data.class_budget, config.data.mask_budget, config.seed)
    clients = client_datasets(train, config.partition, config.seed, tuple(config.data.weak_forms),
                              ignore_index_of(meta))
  if len(eval_dataset) == 0:
    raise ValueError(f"config.data.eval_split={config.data.eval_split!r} has no rows in {config.data.name}")
  num_classes = meta[kind.num_classes_key]
  model_kwargs = dict(config.model.kwargs)
  for key in kind.model_meta:  # e.g. multitask's num_mask_classes
    model_kwargs.setdefault(key, meta[key])
  check_model_depth(config, image_shape)
  model = models.get_model(config.model.name, num_classes, **model_kwargs)
  if config.data.batch_mode == "patches":
    input_shape = (config.data.patch_size, config.data.patch_size, image_shape[-1])
  else:
    input_shape = tuple(image_shape)
  key_model, _ = jax.random.split(jax.random.PRNGKey(config.seed))
  variables = models.init_variables(model, key_model, input_shape)
  if config.model.init_encoder:
    variables = models.load_pretrained_encoder(variables, config.model.init_encoder)
  task = build_task(config, model, tasks.TaskData(meta, train, num_classes, ignore_index_of(meta)))
  if task.extra_variables:  # state the loss carries between steps (e.g. distribution alignment's running mean)
    variables = {**variables, **task.extra_variables}
  algorithm, roles = get_algorithm(config.algorithm.name)(config, task, variables, model)
  cohorts: dict[str, list[int]] = {}
  for client_id, role in enumerate(roles(len(clients))):
    cohorts.setdefault(role, []).append(client_id)
  dp = dp_config(config, len(clients))
  if dp is not None:
    algorithm = privacy.with_dp(algorithm, dp)
  cohort_views = dict(config.data.cohort_views)
  batch_fns = {name: make_batch_fn(config.data.batch_mode, mean=tuple(config.data.mean), std=tuple(config.data.std),
                                   flips=config.data.flips, patch_size=config.data.patch_size,
                                   views=tuple(cohort_views.get(name, config.data.views)))
               for name in cohorts}
  data, plans, streamed = {}, {}, {}
  for name, ids in cohorts.items():
    if config.data.loader == "grain":
      sources = [c if config.data.name == "tfds" else RowSource(c, TRAIN_KEYS) for c in (clients[i] for i in ids)]
      streamed[name] = StreamedCohort(sources, ids,
                                      config.client.batch_size, config.client.local_steps, config.seed)
      plans[name] = streamed[name].plan
    else:
      data[name], plans[name] = cohort_data([clients[i] for i in ids], ids, config.client.batch_size,
                                            config.client.local_steps, config.client.local_epochs)
  predict, predict_seg = (None if fn is None else make_predict(fn, tuple(config.data.mean), tuple(config.data.std),
                                                                config.eval.pad_multiple)
                          for fn in (task.predict_fn, task.predict_seg_fn))
  return Experiment(config, meta, clients, eval_dataset, cohorts, model, task, variables, algorithm, data,
                    plans, batch_fns, streamed, dp, cls_eval_dataset, select_dataset, predict, predict_seg)


def initial_state(exp: Experiment) -> tuple[ServerState, dict[str, PyTree]]:
  """Server state and every client's persistent state, from the config seed."""
  _, key_run = jax.random.split(jax.random.PRNGKey(exp.config.seed))

  @jax.jit  # one program: run eagerly, every op and every per-leaf stack compiles on its own
  def states(variables, key_run):
    server_state = exp.algorithm.init(variables, key_run)
    client_states = {}
    for name, ids in exp.cohorts.items():
      spec = exp.algorithm.cohorts[name]
      per_client = [spec.client_init(variables, jax.random.fold_in(key_run, i)) for i in ids]
      client_states[name] = jax.tree.map(lambda *xs: jnp.stack(xs), *per_client)
    return server_state, client_states

  server_state, client_states = states(exp.variables, key_run)
  return strongly_typed(server_state), strongly_typed(client_states)


def strongly_typed(tree: PyTree) -> PyTree:
  """``tree`` with no weakly-typed array (e.g. ``jnp.full(shape, 1 / C)``): a round returns strongly-typed
  arrays, and a weak input would make the second round trace and compile everything again."""
  return jax.tree.map(lambda x: jnp.asarray(x, dtype=x.dtype) if getattr(x, "weak_type", False) else x, tree)


def num_selected(exp: Experiment, name: str) -> int:
  """Participants per round of a cohort: ``clients_per_round`` spread over cohorts by size (all if 0)."""
  total = sum(len(ids) for ids in exp.cohorts.values())
  per_round = exp.config.aggregation.clients_per_round
  size = len(exp.cohorts[name])
  if per_round <= 0 or per_round >= total:
    return size
  return max(1, round(per_round * size / total))


def state_tree(server_state: ServerState, client_states: Mapping[str, PyTree]) -> dict:
  return {"server": server_state, "clients": dict(client_states)}
