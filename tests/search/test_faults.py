"""Faults on a real Ray: a driver killed with SIGKILL or stopped with SIGINT, then `hpsearch resume`; extensions.

Each driver runs in its own session (start_new_session), so every Ray process it starts shares its
session id: after a SIGKILL the test kills exactly those, and after a clean exit it checks none is left.
"""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from search import results
from trainables.config import CHECKPOINT_METRICS

pytestmark = pytest.mark.ray

RUN = ["--subset", "12000", "--max-epochs", "3", "--num-samples", "5", "--max-concurrent", "1", "--seed", "4"]


def hpsearch(*argv: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "search.cli", *argv],
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


def session_pids(sid: int) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True).stdout
    return [int(p) for p, s in (line.split() for line in out.splitlines()) if int(s) == sid and int(p) != sid]


def kill_session(sid: int) -> None:
    for pid in session_pids(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def assert_no_ray_left(sid: int) -> None:
    deadline = time.monotonic() + 20
    while session_pids(sid) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not session_pids(sid), "Ray processes outlived the CLI"


def finished_trials(experiment_dir: Path) -> set[str]:
    try:
        rows = results.read_table(str(experiment_dir.parent), "trials", [experiment_dir.name]).to_pylist()
    except Exception:  # not written yet
        return set()
    return {r["trial_id"] for r in rows if r["status"] in ("completed", "stopped_early", "diverged")}


def epoch_log(experiment_dir: Path) -> Counter:
    path = experiment_dir / "epochs.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return Counter((r["trial_id"], r["epoch"]) for r in map(json.loads, lines))


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"driver exited early ({proc.returncode}):\n{proc.stdout.read()}")
        if time.monotonic() > deadline:
            pytest.fail("timed out waiting for the search to make progress")
        time.sleep(0.2)


def resume_and_check(tmp_path: Path, name: str, done_before: set[str], log_before: Counter, *argv: str) -> None:
    """Continue with `argv` (by default `hpsearch resume NAME`) and check that nothing finished was run again."""
    proc = hpsearch(*(argv or ("resume", name)), "--results-dir", str(tmp_path), "--verbose", "0")
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, out
    assert_no_ray_left(proc.pid)
    experiment_dir = tmp_path / name
    experiment = results.read_table(str(tmp_path), "experiments", [name]).to_pylist()[0]
    assert experiment["status"] == "finished" and experiment["test_acc"] > 0.8
    trials = results.read_table(str(tmp_path), "trials", [name]).to_pylist()
    assert len(trials) == 5 and all(t["status"] != "error" for t in trials)
    log_after = epoch_log(experiment_dir)
    for trial_id in done_before:  # a finished trial never trains again
        assert {k: v for k, v in log_after.items() if k[0] == trial_id} == {
            k: v for k, v in log_before.items() if k[0] == trial_id
        }
    retrained = Counter(trial for (trial, _), n in log_after.items() if n > 1)
    assert all(n <= 1 for n in retrained.values()), retrained  # at most the epoch in flight
    # ASHA's state came back too: its first rung (epoch 1) holds every trial, from before and after the stop
    first_rung = json.loads((experiment_dir / "asha.state").read_text())["rungs"][-1]
    assert first_rung[0] == 1 and set(first_rung[1]) >= {t["trial_id"] for t in trials}
    epochs = results.read_table(str(tmp_path), "epochs", [name]).to_pylist()
    for t in trials:
        got = sorted(e["epoch"] for e in epochs if e["trial_id"] == t["trial_id"])
        assert got == list(range(1, t["epochs_run"] + 1)), (t["trial_id"], got)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["sigkill", "sigint"])
def test_stopped_driver_then_resume(tmp_path, sig):
    name = sig.name.lower()
    proc = hpsearch("run", *RUN, "--name", name, "--results-dir", str(tmp_path), "--verbose", "0")
    try:
        wait_for(lambda: len(finished_trials(tmp_path / name)) >= 2, proc)
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=120)
    finally:
        kill_session(proc.pid)
    if sig == signal.SIGINT:  # a clean stop: state kept, experiment marked, Ray shut down
        assert proc.returncode == 130, out
        assert_no_ray_left(proc.pid)
        experiment = results.read_table(str(tmp_path), "experiments", [name]).to_pylist()[0]
        assert experiment["status"] == "interrupted"
    done_before = finished_trials(tmp_path / name)
    assert len(done_before) < 5, "the search finished before it could be stopped"
    # SIGINT's search continues through `run --resume`, which takes the same flags as the run it continues
    again = ("run", *RUN, "--name", name, "--resume") if sig == signal.SIGINT else ()
    resume_and_check(tmp_path, name, done_before, epoch_log(tmp_path / name), *again)


def test_extending_a_finished_search(tmp_path):
    name = "extended"
    base = ["--subset", "2000", "--max-epochs", "2", "--num-samples", "3", "--results-dir", str(tmp_path)]
    first = hpsearch("run", *base, "--name", name, "--verbose", "0")
    out, _ = first.communicate(timeout=300)
    assert first.returncode == 0, out
    before = results.read_table(str(tmp_path), "trials", [name]).to_pylist()
    extend = hpsearch("resume", name, "--num-samples", "2", "--results-dir", str(tmp_path), "--verbose", "0")
    out, _ = extend.communicate(timeout=300)
    assert extend.returncode == 0, out
    assert_no_ray_left(extend.pid)
    after = results.read_table(str(tmp_path), "trials", [name]).to_pylist()
    assert len(after) == 5
    assert {t["trial_id"] for t in before} < {t["trial_id"] for t in after}
    unchanged = {t["trial_id"]: t["best_val_acc"] for t in after}
    assert all(unchanged[t["trial_id"]] == t["best_val_acc"] for t in before)
    experiment = results.read_table(str(tmp_path), "experiments", [name]).to_pylist()[0]
    assert experiment["status"] == "finished" and experiment["trials"] == 5
    assert experiment["best_val_acc"] == max(t["best_val_acc"] for t in after)


def test_a_stop_asha_decided_just_before_the_interrupt_holds_on_resume(tmp_path):
    """Tune acts on a STOP only after that result's checkpoint is saved; a Ctrl-C in between leaves the trial
    unfinished in Ray's state while asha.state holds the decision. That trial must not train again.

    The race is made certain here: ASHA never stops on its own (grace period = max epochs), the driver is
    stopped mid-trial, and a decision on the trial's newest checkpoint is written as RecordingASHA writes it.
    """
    name = "decided"
    argv = ["--subset", "12000", "--max-epochs", "20", "--grace-period", "20", "--num-samples", "2",
            "--max-concurrent", "1", "--seed", "4", "--name", name, "--results-dir", str(tmp_path), "--verbose", "0"]
    proc = hpsearch("run", *argv)
    try:
        wait_for(lambda: len(epoch_log(tmp_path / name)) >= 2, proc)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        kill_session(proc.pid)
    assert proc.returncode == 130, out
    (stopped,) = {trial for trial, _ in epoch_log(tmp_path / name)}
    saved = (tmp_path / name).glob(f"trainable_{stopped}_*/checkpoint_*/{CHECKPOINT_METRICS}")
    decided_at = max(json.loads(p.read_text())["epoch"] for p in saved)
    assert decided_at < 20, "the trial finished before the driver was stopped"
    state_file = tmp_path / name / "asha.state"
    state = json.loads(state_file.read_text())
    state.setdefault("decisions", {})[stopped] = {"asha_rung": decided_at, "asha_cutoff": 1.0, "asha_value": 0.5}
    state_file.write_text(json.dumps(state))

    proc = hpsearch("resume", name, "--results-dir", str(tmp_path), "--verbose", "0")
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, out
    log = epoch_log(tmp_path / name)
    assert {k: n for k, n in log.items() if k[0] == stopped} == {(stopped, e): 1 for e in range(1, decided_at + 1)}
    trials = {t["trial_id"]: t for t in results.read_table(str(tmp_path), "trials", [name]).to_pylist()}
    assert trials[stopped]["status"] == "stopped_early" and trials[stopped]["asha_rung"] == decided_at
    (other,) = set(trials) - {stopped}
    assert trials[other]["status"] == "completed" and trials[other]["epochs_run"] == 20
