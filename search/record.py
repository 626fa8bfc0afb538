"""What a search records: the epoch log, the trial rows, the Parquet tables, and which checkpoints to keep.

No Ray import: it reads Tune's Trial objects (status, config, last_result, path, checkpoint) as given.
"""

from __future__ import annotations

import collections
import functools
import json
import math
import os
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from search import results
from search.spec import ExperimentSpec
from trainables.config import CHECKPOINT_METRICS, COMPLETED, DIVERGED, METRIC

EPOCH_LOG = "epochs.jsonl"  # append-only, fsynced per epoch: the durable record the epochs table is built from
# ASHA's rungs, and its stop decisions (rung, cutoff, the trial's value there), as JSON. Not named *.json:
# a restored Tuner copies the experiment's top-level *.json and *.pkl into its staging folder and later
# uploads them back, over whatever the resumed search wrote since.
ASHA_LOG = "asha.state"


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


def write_json(path: Path, obj) -> None:
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
    decisions = read_json(spec.experiment_dir / ASHA_LOG, {}).get("decisions", {})
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
                "node": last.get("node_ip"),
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
        m = read_json(d / CHECKPOINT_METRICS, None)
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


def read_json(path: Path, default):
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return default


@functools.cache
def versions() -> dict:
    """Library versions and the project's git commit, recorded with every experiment."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "python_version": platform.python_version(),
        **{f"{lib}_version": metadata.version(lib) for lib in ("torch", "ray", "hyperopt")},
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


def pick_best(rows: list[dict]) -> dict | None:
    """The trial with the highest validation accuracy at any epoch (ties: the first listed)."""
    scored = [r for r in rows if r["best_val_acc"] is not None and not math.isnan(r["best_val_acc"])]
    return max(scored, key=lambda r: r["best_val_acc"], default=None)


def previous_row(spec: ExperimentSpec) -> dict:
    """The experiment's row as last written (empty for a new experiment)."""
    if not (spec.experiment_dir / "experiment.parquet").exists():
        return {}
    return (results.read_table(spec.results_dir, "experiments", [spec.name]).to_pylist() or [{}])[0]
