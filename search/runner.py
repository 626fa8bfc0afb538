"""Builds and runs the Tuner; resumes and extends searches; evaluates the best checkpoint once on the test set.

The data flow: spec -> (search space, searcher, scheduler, resources) -> Tuner.fit() -> ResultGrid ->
best checkpoint -> test evaluation -> Parquet tables. Ray's experiment folder is the experiment's own
folder (`results/<name>/`), so `Tuner.restore` and TensorBoard work on it unchanged.
"""

from __future__ import annotations

import collections
import functools
import importlib.util
import json
import math
import os
import platform
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

# Tune's older console output: its CLIReporter table is what --verbose 2 shows.
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
# Snapshot Tune's experiment state (trials, searcher) at most a second apart instead of Tune's adaptive
# >= 10 s: a killed driver then forgets at most the last second of new trials. Epochs need no snapshot:
# every trial resumes from its newest checkpoint on disk (trainables.tune.newest_state).
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")

import ray  # noqa: E402
from ray import tune  # noqa: E402
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler  # noqa: E402
from ray.tune.search import BasicVariantGenerator  # noqa: E402
from ray.tune.search.hyperopt import HyperOptSearch  # noqa: E402

from search import results  # noqa: E402
from search.errors import ClusterError, ExperimentExists, ExperimentNotFound, SpecError  # noqa: E402
from search.space import HYPERPARAMETERS, Dimension, build_space, seed_point  # noqa: E402
from search.spec import ExperimentSpec, load_spec  # noqa: E402
from trainables.data import MnistSplits, load_mnist  # noqa: E402
from trainables.config import COMPLETED, DIVERGED, EPOCH_METRICS, METRIC, MODE, TrainConfig  # noqa: E402
from trainables.train import Trainer, load_model, save_model, to_tensors  # noqa: E402
from trainables.train import evaluate as evaluate_model  # noqa: E402
from trainables.tune import CHECKPOINT_METRICS, REPLAYED, load_checkpoint_state, trainable  # noqa: E402

EPOCH_LOG = "epochs.jsonl"  # append-only, fsynced per epoch: the durable record the epochs table is built from
ASHA_LOG = "asha.json"  # ASHA's stop decisions: rung, cutoff and the trial's value there
BEST_DIR = "best"
REFRESH_S = 5.0  # how often the tables are rewritten while a search runs


@dataclass
class Summary:
    """What a finished (or interrupted) search tells the user."""

    name: str
    status: str
    experiment_dir: Path
    best: dict | None = None
    test_loss: float | None = None
    test_acc: float | None = None
    counts: dict = field(default_factory=dict)
    wall_s: float = 0.0

    def lines(self) -> list[str]:
        out = [f"experiment {self.name}: {self.status} in {self.wall_s:.1f} s"]
        out.append(f"trials: {format_counts(self.counts) or 'none'}")
        if self.best:
            b = self.best
            out.append(
                f"best trial {b['trial_id']}: hidden_units={b['hidden_units']} lr={b['lr']:.4g} "
                f"momentum={b['momentum']:.3f} val_acc={b['best_val_acc']:.4f} (epoch {b['best_epoch']})"
            )
        if self.test_acc is not None:
            out.append(f"test_acc={self.test_acc:.4f} test_loss={self.test_loss:.4f} (best checkpoint, evaluated once)")
        out.append(f"results: {self.experiment_dir}")
        return out


def count_statuses(rows: list[dict]) -> dict[str, int]:
    return dict(collections.Counter(r["status"] for r in rows))


def format_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in sorted(counts.items()))


# --- Ray connection ---------------------------------------------------------------------------


def connect(spec: ExperimentSpec, verbose: int) -> bool:
    """Join the cluster at spec.address or start a private local Ray; True when we started it (and must stop it)."""
    if ray.is_initialized():
        return False
    quiet = {"logging_level": "ERROR" if verbose < 2 else "INFO", "log_to_driver": verbose >= 2}
    if spec.address is None:
        # address="local" always starts a new Ray; plain None would join whatever
        # /tmp/ray/ray_current_cluster names, stale or not.
        ray.init(address="local", include_dashboard=False, **quiet)
        return True
    probe(spec.address)
    try:
        ray.init(address=spec.address, **quiet)
    except (ConnectionError, TimeoutError, RuntimeError, ValueError) as e:
        cause = f"{e} {e.__cause__ or ''}"
        hint = "; set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN as on the cluster's nodes" if "uthentication" in cause else ""
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ClusterError(f"cannot connect to the Ray cluster at address {spec.address!r}: {first}{hint}") from None
    return False


def probe(address: str, timeout_s: float = 3.0) -> None:
    """Fail in seconds, not Ray's ~14 minutes of retries, when nothing listens at the address."""
    target = address
    if address == "auto":
        from ray._private.utils import read_ray_address  # the file `ray start` writes

        target = os.environ.get("RAY_ADDRESS") or read_ray_address()
        if not target:
            raise ClusterError("--address auto found no running Ray cluster on this machine (start one with `ray start --head`)")
    if target.startswith("ray://"):
        if importlib.util.find_spec("grpc") is None:  # Ray Client's transport, from ray[client]
            raise ClusterError(f"address {address!r} needs Ray Client: pip install 'ray[client]'")
        target = target.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"address must be auto, HOST:PORT or ray://HOST:PORT, got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise ClusterError(f"cannot reach the Ray cluster at {target} (from --address {address}): {e.strerror or e}") from None


def check_resources(spec: ExperimentSpec) -> None:
    """Fail fast when no node could ever run a trial, instead of leaving trials pending forever."""
    total = ray.cluster_resources()
    if spec.gpus_per_trial > 0 and total.get("GPU", 0) <= 0:
        raise ClusterError(
            f"gpus_per_trial={spec.gpus_per_trial} needs a GPU, but the Ray cluster has none "
            f"(CPU={total.get('CPU', 0):g}, GPU=0); use --gpus-per-trial 0 or join a cluster with GPUs"
        )
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    fits = any(
        r.get("CPU", 0) >= spec.cpus_per_trial and r.get("GPU", 0) >= spec.gpus_per_trial for r in nodes
    )
    if not fits:
        largest = max((r.get("CPU", 0) for r in nodes), default=0)
        raise ClusterError(
            f"no node can hold one trial: cpus_per_trial={spec.cpus_per_trial:g}, "
            f"gpus_per_trial={spec.gpus_per_trial:g}, largest node has CPU={largest:g}"
        )


# --- building the Tuner ------------------------------------------------------------------------


def to_domain(d: Dimension):
    if d.kind == "quniform":
        return tune.quniform(d.low, d.high, d.step)
    if d.kind == "loguniform":
        return tune.loguniform(d.low, d.high)
    return tune.uniform(d.low, d.high)


def build_searcher(spec: ExperimentSpec):
    points = [seed_point(spec)] if spec.seed_point else None
    if spec.search_alg == "hyperopt":
        return HyperOptSearch(
            points_to_evaluate=points, n_initial_points=spec.n_initial_points, random_state_seed=spec.seed
        )
    return BasicVariantGenerator(points_to_evaluate=points, random_state=spec.seed)


class RecordingASHA(ASHAScheduler):
    """ASHA that writes down each early stop: the rung, the cutoff there and the trial's value.

    Ray keeps only the rung's values; the cutoff a trial lost against is gone once others report.
    """

    def __init__(self, log_path: Path, **kwargs):
        super().__init__(**kwargs)
        self.log_path = str(log_path)
        self.decisions: dict[str, dict] = {}

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        cutoff = rung = None
        bracket = self._trial_info.get(trial.trial_id)
        if bracket is not None and self._time_attr in result:
            for milestone, recorded in bracket._rungs:
                if result[self._time_attr] >= milestone and trial.trial_id not in recorded:
                    rung, cutoff = milestone, bracket.cutoff(recorded)
                    break
        action = super().on_trial_result(tune_controller, trial, result)
        if action == TrialScheduler.STOP and result.get(self._time_attr, 0) < self._max_t and cutoff is not None:
            self.decisions[trial.trial_id] = {
                "asha_rung": int(rung),
                "asha_cutoff": float(self._metric_op * cutoff),
                "asha_value": float(result[self._metric]),
            }
            _write_json(Path(self.log_path), self.decisions)
        return action


def build_scheduler(spec: ExperimentSpec, experiment_dir: Path):
    if spec.scheduler == "fifo":
        return FIFOScheduler()
    return RecordingASHA(
        experiment_dir / ASHA_LOG,
        time_attr="epoch",  # ours: Tune's training_iteration lags when a trial resumes from a newer checkpoint
        max_t=spec.max_epochs,
        grace_period=spec.grace_period,
        reduction_factor=spec.reduction_factor,
    )


def settings_of(spec: ExperimentSpec, experiment_path: str) -> dict:
    """The experiment-wide values every trial needs besides its searched hyperparameters."""
    keys = ("model", "batch_size", "max_epochs", "seed", "cpus_per_trial", "gpus_per_trial")
    return {**{k: getattr(spec, k) for k in keys}, "experiment_path": experiment_path}


def build_trainable(spec: ExperimentSpec, data: MnistSplits, experiment_path: str):
    # with_parameters puts the arrays into the object store once; every trial maps the same copy.
    fn = tune.with_parameters(trainable, data=data, settings=settings_of(spec, experiment_path))
    return tune.with_resources(fn, {"cpu": spec.cpus_per_trial, "gpu": spec.gpus_per_trial})


def max_concurrent(spec: ExperimentSpec) -> int:
    """Never more trials at once than the cluster's CPUs (and GPUs) hold: extra ones would only queue."""
    if spec.max_concurrent is not None:
        return spec.max_concurrent
    total = ray.cluster_resources()
    fit = int(total.get("CPU", 1) // spec.cpus_per_trial)
    if spec.gpus_per_trial > 0:
        fit = min(fit, int(round(total.get("GPU", 0) / spec.gpus_per_trial, 6)))
    return max(1, min(fit, spec.num_samples))


def build_tuner(
    spec: ExperimentSpec, data: MnistSplits, tables: TablesCallback, verbose: int, run_name: str,
    storage_path: str | None = None, searcher=None,
):
    storage_path = storage_path or spec.ray_storage_path
    return tune.Tuner(
        build_trainable(spec, data, f"{storage_path.rstrip('/')}/{run_name}"),
        # A restored searcher already holds the space; Tune refuses a second copy.
        param_space={} if searcher else {d.name: to_domain(d) for d in build_space(spec)},
        tune_config=tune.TuneConfig(
            metric=METRIC,
            mode=MODE,
            search_alg=searcher or build_searcher(spec),
            scheduler=build_scheduler(spec, spec.experiment_dir),
            num_samples=spec.num_samples,
            max_concurrent_trials=max_concurrent(spec),
            time_budget_s=spec.time_budget_s,
            reuse_actors=True,
        ),
        run_config=run_config(spec, tables, verbose, run_name, storage_path),
    )


def run_config(
    spec: ExperimentSpec, tables: TablesCallback, verbose: int, run_name: str, storage_path: str
) -> tune.RunConfig:
    return tune.RunConfig(
        name=run_name,
        storage_path=storage_path,
        # Tune keeps every checkpoint and prune_checkpoints() deletes the ones nobody needs: Tune's own
        # num_to_keep deletes a checkpoint before the experiment snapshot that stops naming it is saved,
        # so a driver killed in between leaves a state that cannot be resumed.
        checkpoint_config=tune.CheckpointConfig(checkpoint_score_attribute=METRIC, checkpoint_score_order=MODE),
        failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        callbacks=[tables],
        # Level 1 is our one-line progress (TablesCallback); level 2 adds Tune's trial table, throttled.
        verbose=2 if verbose >= 2 else 0,
        progress_reporter=tune.CLIReporter(
            parameter_columns=list(HYPERPARAMETERS),
            metric_columns=["epoch", "val_acc", "train_loss"],
            max_progress_rows=12,
            max_report_frequency=15,
            sort_by_metric=True,
        ),
    )


# --- tables, refreshed while the search runs ----------------------------------------------------


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def read_epoch_log(experiment_dir: Path) -> list[dict]:
    """Epoch rows, the last report of each (trial, epoch) winning: a retried epoch replaces its lost attempt."""
    path = experiment_dir / EPOCH_LOG
    if not path.exists():
        return []
    rows: dict[tuple[str, int], dict] = {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a killed driver
            continue
        rows[(row["trial_id"], row["epoch"])] = row
    return sorted(rows.values(), key=lambda r: (r["trial_id"], r["epoch"]))


class TablesCallback(tune.Callback):
    """Logs every epoch durably and keeps the Parquet tables fresh, so a second terminal can query a running search."""

    def __init__(self, spec: ExperimentSpec, started_at: datetime, verbose: int = 1):
        self.spec = spec
        self.started_at = started_at
        self.verbose = verbose
        self.trials: list = []
        self._last_refresh = 0.0
        self._last_line = ""
        self._logged: set | None = None  # (trial_id, epoch) already in the epoch log

    def __getstate__(self):  # pickled into Ray's tuner state; the live trial list is rebuilt on restore
        return {**self.__dict__, "trials": [], "_last_refresh": 0.0, "_last_line": "", "_logged": None}

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if self._logged is None:
            self._logged = {(r["trial_id"], r["epoch"]) for r in read_epoch_log(self.spec.experiment_dir)}
        key = (trial.trial_id, int(result["epoch"]))
        if result.get(REPLAYED) and key in self._logged:  # trained and logged before the restart
            self._maybe_refresh(trials)
            return
        self._logged.add(key)
        row = {"experiment": self.spec.name, "trial_id": trial.trial_id, "epoch": key[1]}
        row.update({k: float(result[k]) for k in EPOCH_METRICS})
        row["elapsed_s"] = time.time() - self.started_at.timestamp()
        with open(self.spec.experiment_dir / EPOCH_LOG, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._maybe_refresh(trials)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._maybe_refresh(trials, force=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._maybe_refresh(trials, force=True)

    def on_step_end(self, iteration, trials, **info):
        self._maybe_refresh(trials)

    def _maybe_refresh(self, trials, force: bool = False) -> None:
        self.trials = trials
        if force or time.monotonic() - self._last_refresh >= REFRESH_S:
            self._last_refresh = time.monotonic()
            rows = write_tables(self.spec, self.started_at, trials, status="running")
            prune_checkpoints(trials)
            if self.verbose >= 1:
                self._progress(rows)

    def _progress(self, rows: list[dict]) -> None:
        """One line per refresh, and only when something changed: counts by status and the best so far."""
        line = f"trials {len(rows)}/{self.spec.num_samples}: " + format_counts(count_statuses(rows))
        best = pick_best(rows)
        if best:
            line += (
                f" | best val_acc {best['best_val_acc']:.4f} (hidden_units={best['hidden_units']}, "
                f"lr={best['lr']:.3g}, momentum={best['momentum']:.2f})"
            )
        if line != self._last_line:
            elapsed = (datetime.now(timezone.utc) - self.started_at).total_seconds()
            print(f"[{elapsed:7.1f}s] {line}", flush=True)
            self._last_line = line


def trial_status(trial, history: list[dict], max_epochs: int, decisions: dict, interrupted: bool = False) -> str:
    """completed | stopped_early | diverged | error | running | pending, from Tune's status and our epoch log.

    After Ctrl-C Tune ends running trials too; those continue on resume, so they are pending, not stopped.
    """
    if trial.status == "ERROR":
        return "error"
    if trial.status in ("PENDING", "PAUSED"):
        return "pending"
    if trial.status == "RUNNING":
        return "running"
    if history and not all(math.isfinite(history[-1][k]) for k in ("train_loss", "val_loss")):
        return DIVERGED
    if trial.trial_id in decisions:
        return "stopped_early"
    if len(history) >= max_epochs:
        return COMPLETED
    return "pending" if interrupted else "stopped_early"


def _error_of(trial) -> str | None:
    if trial.status != "ERROR" or not trial.error_file:
        return None
    try:
        lines = [ln for ln in Path(trial.error_file).read_text().splitlines() if ln.strip()]
    except OSError:
        return "error (no error file)"
    return lines[-1][:1000] if lines else "error"


def trial_rows(spec: ExperimentSpec, trials: list, epochs: list[dict], interrupted: bool = False) -> list[dict]:
    decisions = _read_json(spec.experiment_dir / ASHA_LOG, {})
    by_trial: dict[str, list[dict]] = {}
    for e in epochs:
        by_trial.setdefault(e["trial_id"], []).append(e)
    rows = []
    for t in trials:
        history = by_trial.get(t.trial_id, [])
        best = max(history, key=lambda e: e["val_acc"] if not math.isnan(e["val_acc"]) else -1, default=None)
        last = t.last_result or {}
        best_ckpt = best_checkpoint(t.path)
        rows.append(
            {
                "experiment": spec.name,
                "trial_id": t.trial_id,
                "model": spec.model,
                "hidden_units": int(round(t.config["hidden_units"])),
                "lr": float(t.config["lr"]),
                "momentum": float(t.config["momentum"]),
                "batch_size": spec.batch_size,
                "status": trial_status(t, history, spec.max_epochs, decisions, interrupted),
                "epochs_run": len(history),
                "best_val_acc": best["val_acc"] if best else None,
                "best_epoch": best["epoch"] if best else None,
                "last_val_acc": history[-1]["val_acc"] if history else None,
                "train_s": sum(e["epoch_s"] for e in history) if history else None,
                "node": last.get("node"),
                "node_id": last.get("node_id"),
                "cpus": spec.cpus_per_trial,
                "gpus": spec.gpus_per_trial,
                "checkpoint_path": best_ckpt or (t.checkpoint.path if t.checkpoint else None),
                "error": _error_of(t),
                **decisions.get(t.trial_id, {}),
            }
        )
    return rows


def checkpoints_of(trial_path: str | None) -> list[tuple[str, int, float]]:
    """(path, epoch, val_acc) of a trial's checkpoints on local storage, oldest first; [] elsewhere."""
    if not trial_path or "://" in trial_path:
        return []
    found = []
    for d in sorted(Path(trial_path).glob("checkpoint_*")):
        m = _read_json(d / CHECKPOINT_METRICS, None)
        if m is not None:
            found.append((str(d), m["epoch"], m[METRIC]))
    return found


def best_checkpoint(trial_path: str | None) -> str | None:
    scored = [c for c in checkpoints_of(trial_path) if not math.isnan(c[2])]
    return max(scored, key=lambda c: c[2])[0] if scored else None


def _checkpoints_named_in(snapshot: str) -> set[str]:
    """"<trial folder>/checkpoint_NNNNNN" for every checkpoint path a Tune snapshot mentions.

    Trial entries are JSON inside JSON (escaped quotes) holding pickles as hex: decode the bare hex
    runs to bytes and look for the paths in them, never unpickling anything. Linear in the snapshot.
    """
    blobs = [snapshot.encode()] + [bytes.fromhex(h) for h in re.findall(r"[0-9a-f]{64,}", snapshot) if len(h) % 2 == 0]
    named = set()
    for blob in blobs:
        for m in re.finditer(rb"/(checkpoint_\d{6})", blob):
            start = blob.rfind(b"/", 0, m.start()) + 1
            named.add(f"{blob[start:m.start()].decode(errors='replace')}/{m.group(1).decode()}")
    return named


def prune_checkpoints(trials: list) -> None:
    """Delete checkpoints nobody needs: keep each trial's best, its newest, and the latest the newest Tune snapshot names.

    Local storage only (checkpoints_of): on s3:// every checkpoint is kept.
    """
    crowded = [(t, found) for t in trials if len(found := checkpoints_of(t.path)) > 2]
    if not crowded:
        return
    snapshots = sorted(Path(crowded[0][0].path).parent.glob("experiment_state-*.json"))
    try:
        text = snapshots[-1].read_text()
        json.loads(text)  # a snapshot still being copied must not decide anything
    except (IndexError, OSError, json.JSONDecodeError):
        return
    named = _checkpoints_named_in(text)
    for t, found in crowded:
        # Tune's checkpoint list names every checkpoint it ever saw; a restore needs only its latest.
        trial_dir = Path(t.path).name
        latest = max((n for n in named if n.startswith(f"{trial_dir}/")), default=None)
        keep = {found[-1][0], best_checkpoint(t.path), latest and str(Path(t.path).parent / latest)}
        for path, _, _ in found:
            if path not in keep:
                shutil.rmtree(path, ignore_errors=True)


def _read_json(path: Path, default):
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return default


@functools.cache
def versions() -> dict:
    """Library versions and the project's git commit, recorded with every experiment."""
    import hyperopt
    import torch

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "python_version": platform.python_version(),
        "torch_version": torch.__version__,
        "ray_version": ray.__version__,
        "hyperopt_version": hyperopt.__version__,
        "git_commit": commit,
    }


def current_rows(spec: ExperimentSpec, trials: list, status: str) -> tuple[list[dict], list[dict]]:
    """(trial rows, epoch rows) as they stand: from the epoch log, Tune's trials and earlier runs' rows."""
    epochs = read_epoch_log(spec.experiment_dir)
    rows = merge_previous(spec, trial_rows(spec, trials, epochs, interrupted=status == "interrupted"), trials)
    known = {r["trial_id"] for r in rows}
    return rows, [e for e in epochs if e["trial_id"] in known]


def write_tables(
    spec: ExperimentSpec,
    started_at: datetime,
    trials: list,
    status: str,
    best: dict | None = None,
    test: tuple[float, float] | None = None,
    ended_at: datetime | None = None,
    rows: tuple[list[dict], list[dict]] | None = None,
) -> list[dict]:
    """Rewrite experiment, trials and epochs tables (atomically); `rows` as current_rows() gives them."""
    rows, epochs = rows or current_rows(spec, trials, status)
    results.write_epochs(spec.experiment_dir, epochs)
    results.write_trials(spec.experiment_dir, rows)
    now = ended_at or datetime.now(timezone.utc)
    spec_cols = {k: v for k, v in spec.to_dict().items() if k in results.EXPERIMENT_SCHEMA.names}
    row = {
        **spec_cols,
        "status": status,
        "started_at": started_at,
        "ended_at": ended_at,
        "wall_s": (now - started_at).total_seconds(),
        "trials": len(rows),
        **versions(),
    }
    if best is not None:
        row.update(
            best_trial_id=best["trial_id"],
            best_hidden_units=best["hidden_units"],
            best_lr=best["lr"],
            best_momentum=best["momentum"],
            best_val_acc=best["best_val_acc"],
        )
    if test is not None:
        row["test_loss"], row["test_acc"] = test
    results.write_experiment(spec.experiment_dir, row)
    return rows


def merge_previous(spec: ExperimentSpec, rows: list[dict], trials: list) -> list[dict]:
    """Add the rows of trials from earlier Ray runs of this experiment (before an extension).

    A trial of the current run that Tune's restored state does not list (started after its last
    snapshot, then lost with the driver) is dropped: Tune has replaced it with a new trial.
    """
    if not (spec.experiment_dir / "trials.parquet").exists():
        return rows
    current = {r["trial_id"] for r in rows}
    runs = {Path(t.path).parent for t in trials if t.path and "://" not in t.path}
    previous = results.read_table(spec.results_dir, "trials", [spec.name]).to_pylist()
    earlier = [
        r for r in previous
        if r["trial_id"] not in current and not any(any(run.glob(f"*_{r['trial_id']}_*")) for run in runs)
    ]
    return earlier + rows


# --- after the search ----------------------------------------------------------------------------


def pick_best(rows: list[dict]) -> dict | None:
    """The trial with the highest validation accuracy at any epoch (ties: the first listed)."""
    scored = [r for r in rows if r["best_val_acc"] is not None and not math.isnan(r["best_val_acc"])]
    return max(scored, key=lambda r: r["best_val_acc"], default=None)


def evaluate_best(spec: ExperimentSpec, grid, best: dict, data: MnistSplits) -> tuple[float, float] | None:
    """Load the best trial's best checkpoint, evaluate it once on the test set, and save it under best/."""
    if best["checkpoint_path"] and Path(best["checkpoint_path"]).is_dir():  # local storage: our best_checkpoint
        checkpoint = tune.Checkpoint(best["checkpoint_path"])
    else:
        result = next((r for r in grid if (r.metrics or {}).get("trial_id") == best["trial_id"]), None)
        checkpoint = result.get_best_checkpoint(METRIC, MODE) if result and result.best_checkpoints else None
    if checkpoint is None:
        return None
    state = load_checkpoint_state(checkpoint)
    cfg = TrainConfig(**{**state["config"], "device": "auto", "num_threads": None})
    trainer = Trainer(cfg, data, state=state)
    test = trainer.test(data)
    save_best(spec, trainer, best["trial_id"], test)
    return test


def save_best(spec: ExperimentSpec, trainer: Trainer, trial_id: str, test: tuple[float, float]) -> None:
    """best/model.pt (state dict + model config + hyperparameters + metrics) and best/metrics.json."""
    best_dir = spec.experiment_dir / BEST_DIR
    best_dir.mkdir(parents=True, exist_ok=True)
    val_loss, val_acc = trainer.validate()
    summary = {
        "trial_id": trial_id,
        "hyperparameters": {k: getattr(trainer.cfg, k) for k in HYPERPARAMETERS},
        "epoch": trainer.epoch,
        "val_loss": val_loss,
        "val_acc": val_acc,
        "test_loss": test[0],
        "test_acc": test[1],
    }
    tmp = best_dir / ".model.pt.tmp"
    save_model(tmp, trainer, extra={"metrics": summary})
    os.replace(tmp, best_dir / "model.pt")
    _write_json(best_dir / "metrics.json", summary)


def previous_row(spec: ExperimentSpec) -> dict:
    """The experiment's row as last written (empty for a new experiment)."""
    if not (spec.experiment_dir / "experiment.parquet").exists():
        return {}
    return (results.read_table(spec.results_dir, "experiments", [spec.name]).to_pylist() or [{}])[0]


def finish(spec, started_at, grid, trials, data, interrupted: bool) -> Summary:
    """Test-evaluate the best checkpoint (unless interrupted), write the final tables, summarise."""
    ended = datetime.now(timezone.utc)
    prune_checkpoints(trials)  # Tune saved its final snapshot when fit() returned
    status = "interrupted" if interrupted else "finished"
    rows, epochs = current_rows(spec, trials, status)
    best = pick_best(rows)
    previous = previous_row(spec)
    test = None
    if best is not None and not interrupted:
        if previous.get("best_trial_id") == best["trial_id"] and previous.get("test_acc") is not None:
            test = (previous["test_loss"], previous["test_acc"])  # an extension found nothing better
        else:
            test = evaluate_best(spec, grid, best, data)
    write_tables(spec, started_at, trials, status, best=best, test=test, ended_at=ended, rows=(rows, epochs))
    return Summary(
        name=spec.name,
        status=status,
        experiment_dir=spec.experiment_dir,
        best=best,
        test_loss=test[0] if test else None,
        test_acc=test[1] if test else None,
        counts=count_statuses(rows),
        wall_s=(ended - started_at).total_seconds(),
    )


def was_interrupted(spec: ExperimentSpec, trials: list, expected: int, elapsed_s: float) -> bool:
    """Tune returns normally after Ctrl-C; an unfinished trial, or too few trials without a spent budget, says so."""
    if any(t.status not in ("TERMINATED", "ERROR") for t in trials):
        return True
    budget_spent = spec.time_budget_s is not None and elapsed_s >= spec.time_budget_s
    return len(trials) < expected and not budget_spent


# --- entry points ------------------------------------------------------------------------------


def _started_at(spec: ExperimentSpec) -> datetime:
    """When the experiment first started, kept across resumes so wall_s and elapsed_s stay continuous."""
    return previous_row(spec).get("started_at") or datetime.now(timezone.utc)


def _execute(spec: ExperimentSpec, make_tuner, verbose: int, expected: int | None = None, prepare=None) -> Summary:
    """Connect, check resources, prepare(), run make_tuner(data, tables), finish; record a crash or Ctrl-C."""
    started_here = connect(spec, verbose)
    try:
        check_resources(spec)
        if prepare is not None:
            prepare()
        started_at = _started_at(spec)
        tables = TablesCallback(spec, started_at, verbose)
        try:
            data = load_mnist(spec.data_dir)
            t0 = time.monotonic()
            grid = make_tuner(data.subset(spec.subset), tables).fit()
            # ResultGrid hands out Results; the Trials behind them carry status, config and checkpoints.
            trials = grid._experiment_analysis.trials
            interrupted = was_interrupted(spec, trials, expected or spec.num_samples, time.monotonic() - t0)
            return finish(spec, started_at, grid, trials, data, interrupted)
        except BaseException as e:
            write_tables(spec, started_at, tables.trials, "interrupted" if isinstance(e, KeyboardInterrupt) else "failed")
            raise
    finally:
        if started_here:
            ray.shutdown()


def run(spec: ExperimentSpec, verbose: int = 1) -> Summary:
    """A new search. Refuses to overwrite an existing experiment (Ray #35812): resume it or rename."""
    if (spec.experiment_dir / "spec.json").exists() or (Path(spec.ray_storage_path) / spec.name).exists():
        raise ExperimentExists(
            f"experiment {spec.name!r} already exists in {spec.results_dir}; "
            f"use `hpsearch resume {spec.name}` or choose another --name"
        )
    build = lambda data, tables: build_tuner(spec, data, tables, verbose, spec.name)  # noqa: E731
    return _execute(spec, build, verbose, prepare=lambda: spec.save(spec.experiment_dir))


def ray_experiment_path(spec: ExperimentSpec) -> str:
    return f"{spec.ray_storage_path.rstrip('/')}/{spec.name}"


def open_spec(name: str, results_dir: str) -> ExperimentSpec:
    experiment_dir = Path(results_dir).expanduser().resolve() / name
    if not (experiment_dir / "spec.json").exists():
        known = ", ".join(sorted(p.parent.name for p in Path(results_dir).glob("*/spec.json"))) or "none"
        raise ExperimentNotFound(f"experiment {name!r} not found in {results_dir}; known: {known}")
    return replace(load_spec(experiment_dir), results_dir=results_dir)


def resume(name: str, results_dir: str = "results", num_samples: int | None = None, verbose: int = 1,
           address: str | None = None) -> Summary:
    """Continue an interrupted or crashed search, or extend a finished one by `num_samples` more trials."""
    spec = open_spec(name, results_dir)
    if address is not None:
        spec = replace(spec, address=address)
    status = previous_row(spec).get("status")
    if num_samples is not None:
        if status != "finished":
            raise SpecError(f"--num-samples extends a finished search; {name!r} is {status}: resume it first")
        extended = replace(spec, num_samples=spec.num_samples + num_samples)
        extend = lambda data, tables: build_extension(spec, data, tables, num_samples, verbose)  # noqa: E731
        return _execute(extended, extend, verbose, expected=num_samples, prepare=lambda: extended.save(extended.experiment_dir))
    path = ray_experiment_path(spec)
    if not tune.Tuner.can_restore(path):
        raise ExperimentNotFound(f"experiment {name!r} has no Ray state at {path} to resume from")

    def restore(data, tables):
        # The restored Tuner brings its own searcher, scheduler and TablesCallback from Ray's saved state.
        return tune.Tuner.restore(
            path, trainable=build_trainable(spec, data, path), resume_unfinished=True, resume_errored=True
        )

    return _execute(spec, restore, verbose)


def build_extension(spec: ExperimentSpec, data: MnistSplits, tables: TablesCallback, more: int, verbose: int):
    """A new Tune run of `more` trials whose TPE starts from everything the finished search learned.

    Ray cannot add samples to a finished experiment (#42221), so the extension is a Ray experiment of
    its own, nested in ours; HyperOptSearch is restored from the finished run's searcher state, so TPE
    already knows every evaluated configuration and its val_acc.
    """
    n = len(list(spec.experiment_dir.glob("extend-*"))) + 1
    # A random search has nothing to learn, but must not redraw the configurations it already tried.
    ext = replace(spec, num_samples=more, seed=spec.seed if spec.search_alg == "hyperopt" else spec.seed + n)
    searcher = None
    if spec.search_alg == "hyperopt":
        searcher = build_searcher(ext)
        searcher.restore_from_dir(ray_experiment_path(spec))
    storage = str(spec.experiment_dir)
    return build_tuner(ext, data, tables, verbose, f"extend-{n}", storage_path=storage, searcher=searcher)


def evaluate(name: str, results_dir: str = "results", device: str = "auto") -> tuple[float, float]:
    """Re-run the test evaluation from the saved best model."""
    spec = open_spec(name, results_dir)
    path = spec.experiment_dir / BEST_DIR / "model.pt"
    if not path.exists():
        raise ExperimentNotFound(f"experiment {name!r} has no saved best model at {path}")
    model, _ = load_model(path, device)
    data = load_mnist(spec.data_dir)
    x, y = to_tensors(data.x_test, data.y_test, next(model.parameters()).device)
    return evaluate_model(model, x, y)
