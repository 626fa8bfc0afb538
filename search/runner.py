"""Builds and runs the Tuner; resumes and extends searches; evaluates the best checkpoint once on the test set.

The data flow: spec -> (search space, searcher, scheduler, resources) -> Tuner.fit() -> ResultGrid ->
best checkpoint -> test evaluation -> Parquet tables. Ray's experiment folder is the experiment's own
folder (`results/<name>/`), so `Tuner.restore` and TensorBoard work on it unchanged.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import time
from dataclasses import replace
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

from search.errors import ClusterError, ExperimentExists, ExperimentNotFound, SpecError  # noqa: E402
from search.record import (  # noqa: E402
    ASHA_LOG,
    EPOCH_LOG,
    Summary,
    count_statuses,
    current_rows,
    format_counts,
    pick_best,
    previous_row,
    prune_checkpoints,
    read_epoch_log,
    read_json,
    write_json,
    write_tables,
)
from search.space import HYPERPARAMETERS, Dimension, build_space, seed_point  # noqa: E402
from search.spec import SPEC_FILE, ExperimentSpec, load_spec  # noqa: E402
from trainables.config import EPOCH_METRICS, METRIC, MODE, REPLAYED, TrainConfig  # noqa: E402
from trainables.data import MnistSplits, load_mnist  # noqa: E402
from trainables.train import load_model, model_from_state, resolve_device, save_model, to_tensors  # noqa: E402
from trainables.train import evaluate as evaluate_model  # noqa: E402
from trainables.tune import load_checkpoint_state, trainable  # noqa: E402

BEST_DIR = "best"
REFRESH_S = 5.0  # how often the tables are rewritten while a search runs


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
    """ASHA that keeps its state in a file: each rung's values, and each early stop with its cutoff.

    Tune saves the searcher with the experiment but not the scheduler: a restored Tuner brings this
    object back as it was at the start. Reloading the rungs from the file lets a resumed search judge
    new results against everything seen before. Ray also keeps only a rung's values; the cutoff a trial
    lost against is gone once others report, so it is written down at the decision.

    Tune acts on a STOP only once that result's checkpoint is saved: a driver stopped in between leaves
    the trial unfinished in Ray's state, and a resume would train it on. The file's decisions hold instead.
    """

    def __init__(self, log_path: Path, **kwargs):
        super().__init__(**kwargs)
        self.log_path = str(log_path)
        self._reloaded = False

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._reloaded = False

    def _reload(self) -> None:
        saved = read_json(Path(self.log_path), {})
        for (_, recorded), (_, values) in zip(self._brackets[0]._rungs, saved.get("rungs", [])):
            recorded.update({k: v for k, v in values.items() if k not in recorded})
        self._decisions = saved.get("decisions", {})
        self._reloaded = True

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if not self._reloaded:
            self._reload()
        if trial.trial_id in self._decisions:  # the result its restart replays: stop before it trains again
            return TrialScheduler.STOP
        cutoff = rung = None
        bracket = self._trial_info.get(trial.trial_id)
        if bracket is not None and self._time_attr in result:
            for milestone, recorded in bracket._rungs:
                if result[self._time_attr] >= milestone and trial.trial_id not in recorded:
                    rung, cutoff = milestone, bracket.cutoff(recorded)
                    break
        action = super().on_trial_result(tune_controller, trial, result)
        if action == TrialScheduler.STOP and result.get(self._time_attr, 0) < self._max_t and cutoff is not None:
            self._decisions[trial.trial_id] = {
                "asha_rung": int(rung),
                "asha_cutoff": float(self._metric_op * cutoff),
                "asha_value": float(result[self._metric]),
            }
        rungs = [[m, recorded] for m, recorded in self._brackets[0]._rungs]
        write_json(Path(self.log_path), {"rungs": rungs, "decisions": self._decisions})
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


# --- after the search ----------------------------------------------------------------------------


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
    # The model alone: a Trainer would build an optimizer (2 s of first-use imports) and move the training set.
    cfg = TrainConfig(**{**state["config"], "device": "auto", "num_threads": None})
    device = resolve_device(cfg.device)
    model = model_from_state(state, device)
    val_loss, val_acc = evaluate_model(model, *to_tensors(data.x_val, data.y_val, device))
    test_loss, test_acc = evaluate_model(model, *to_tensors(data.x_test, data.y_test, device))
    summary = {
        "trial_id": best["trial_id"],
        "hyperparameters": {k: getattr(cfg, k) for k in HYPERPARAMETERS},
        "epoch": state["epoch"],
        "val_loss": val_loss,
        "val_acc": val_acc,
        "test_loss": test_loss,
        "test_acc": test_acc,
    }
    save_best(spec, model, cfg, summary)
    return test_loss, test_acc


def save_best(spec: ExperimentSpec, model, cfg: TrainConfig, summary: dict) -> None:
    """best/model.pt (state dict + model config + hyperparameters + metrics) and best/metrics.json."""
    best_dir = spec.experiment_dir / BEST_DIR
    best_dir.mkdir(parents=True, exist_ok=True)
    tmp = best_dir / ".model.pt.tmp"
    save_model(tmp, model, cfg, extra={"metrics": summary})
    os.replace(tmp, best_dir / "model.pt")
    write_json(best_dir / "metrics.json", summary)


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


def run(spec: ExperimentSpec, verbose: int = 1, resume_existing: bool = False) -> Summary:
    """A new search. An existing experiment is never overwritten (Ray #35812): it is refused, or with
    `resume_existing` continued as `hpsearch resume` would, provided the spec is the one it was saved with."""
    if (spec.experiment_dir / SPEC_FILE).exists() or (Path(spec.ray_storage_path) / spec.name).exists():
        if not resume_existing:
            raise ExperimentExists(
                f"experiment {spec.name!r} already exists in {spec.results_dir}; "
                f"use `hpsearch resume {spec.name}` (or `run --resume`) or choose another --name"
            )
        saved = open_spec(spec.name, spec.results_dir)
        differ = [f"{k} (saved {getattr(saved, k)!r}, got {v!r})" for k, v in spec.to_dict().items()
                  if k != "address" and getattr(saved, k) != v]
        if differ:
            raise SpecError(f"--resume continues {spec.name!r} as it was saved, but these options differ: "
                            + "; ".join(differ))
        return resume(spec.name, spec.results_dir, verbose=verbose, address=spec.address)
    build = lambda data, tables: build_tuner(spec, data, tables, verbose, spec.name)  # noqa: E731
    return _execute(spec, build, verbose, prepare=lambda: spec.save(spec.experiment_dir))


def ray_experiment_path(spec: ExperimentSpec) -> str:
    return f"{spec.ray_storage_path.rstrip('/')}/{spec.name}"


def open_spec(name: str, results_dir: str) -> ExperimentSpec:
    experiment_dir = Path(results_dir).expanduser().resolve() / name
    if not (experiment_dir / SPEC_FILE).exists():
        known = ", ".join(sorted(p.parent.name for p in Path(results_dir).glob(f"*/{SPEC_FILE}"))) or "none"
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
