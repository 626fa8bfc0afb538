"""PNG plots of one experiment, drawn from its Parquet tables alone, so they work for any finished or running search.

matplotlib is optional (`pip install 'hpsearch[plots]'`) and imported only here, inside write_report.
We draw on bare Figures with the Agg canvas: no pyplot, no global backend switch, no windows.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from pathlib import Path

from search.results import read_table

PLOTS = ("learning_curves.png", "best_so_far.png", "hyperparameters.png")
STYLES = {  # status -> how its trials look in every plot
    "completed": {"color": "tab:blue", "linestyle": "-", "label": "completed"},
    "stopped_early": {"color": "tab:orange", "linestyle": "--", "label": "stopped early by ASHA"},
    "diverged": {"color": "red", "linestyle": "-", "label": "diverged"},
    "error": {"color": "black", "linestyle": ":", "label": "error"},
    "running": {"color": "tab:green", "linestyle": "-", "label": "running"},
    "pending": {"color": "grey", "linestyle": ":", "label": "pending"},
}
_UNKNOWN = {"color": "grey", "linestyle": "-.", "label": "unknown"}
DPI = 120


def _finite(x) -> bool:
    return x is not None and math.isfinite(x)


def _style(status: str | None) -> dict:
    return STYLES.get(status, _UNKNOWN)


def _learning_curves(fig, name: str, model: str, trials: list[dict], curves: dict) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    ax = fig.subplots()
    best = max((t for t in trials if _finite(t["best_val_acc"])), key=lambda t: t["best_val_acc"], default=None)
    for t in trials:
        points = curves.get(t["trial_id"], [])
        if not points:
            continue
        style = _style(t["status"])
        is_best = best is not None and t["trial_id"] == best["trial_id"]
        x, y = zip(*points)
        ax.plot(
            x, y, color=style["color"], linestyle=style["linestyle"],
            linewidth=2.5 if is_best else 1.0, alpha=1.0 if is_best else 0.7, zorder=3 if is_best else 2,
        )
        last = next(((e, v) for e, v in reversed(points) if _finite(v)), None)
        if t["status"] == "stopped_early" and last:
            ax.plot(*last, marker="x", color=style["color"], markersize=7, linestyle="none")
        if t["status"] == "diverged" and last:
            ax.plot(*last, marker="v", color=style["color"], markersize=6, linestyle="none")
        if t["status"] == "stopped_early" and _finite(t["asha_cutoff"]) and t["asha_rung"] is not None:
            ax.plot(t["asha_rung"], t["asha_cutoff"], marker="_", color="black", markersize=14, linestyle="none")
    present = [s for s in STYLES if any(t["status"] == s for t in trials)]
    handles = [
        Line2D([], [], color=STYLES[s]["color"], linestyle=STYLES[s]["linestyle"],
               marker={"stopped_early": "x", "diverged": "v"}.get(s),
               label=f"{STYLES[s]['label']} ({sum(t['status'] == s for t in trials)})")
        for s in present
    ]
    if any(t["status"] == "stopped_early" and _finite(t["asha_cutoff"]) for t in trials):
        handles.append(Line2D([], [], color="black", marker="_", markersize=14, linestyle="none",
                              label="ASHA cutoff at the rung"))
    if best is not None:
        handles.append(Line2D([], [], color=_style(best["status"])["color"], linewidth=2.5,
                              label=f"best: {best['trial_id']} ({best['best_val_acc']:.4f})"))
    if not curves:
        ax.text(0.5, 0.5, "no epochs reported yet", transform=ax.transAxes, ha="center")
    fig.legend(handles=handles, loc="outside right upper", fontsize="small")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="epoch", ylabel="validation accuracy", title=f"{name}: {len(trials)} {model} trials")
    ax.grid(alpha=0.3)


def _best_so_far(fig, name: str, epochs: list[dict]) -> None:
    ax = fig.subplots()
    points = sorted(
        (e["elapsed_s"], e["val_acc"], e["trial_id"])
        for e in epochs
        if _finite(e["elapsed_s"]) and _finite(e["val_acc"])
    )
    minutes = bool(points) and points[-1][0] > 600
    unit, scale = ("min", 60.0) if minutes else ("s", 1.0)
    if points:
        x = [p[0] / scale for p in points]
        best, running = [], -math.inf
        for _, v, _ in points:
            running = max(running, v)
            best.append(running)
        ax.scatter(x, [p[1] for p in points], s=8, color="grey", alpha=0.4, label="every epoch of every trial")
        ax.step(x, best, where="post", color="tab:blue", linewidth=2, label="best so far")
        top = max(points, key=lambda p: p[1])
        ax.annotate(
            f"{top[1]:.4f} ({top[2]})", (top[0] / scale, top[1]),
            textcoords="offset points", xytext=(0, 8), ha="center", fontsize="small",
        )
        ax.set_ylim(max(0.0, min(best) - 0.05), min(1.0, best[-1] + 0.02))
        ax.legend(loc="lower right", fontsize="small")
    else:
        ax.text(0.5, 0.5, "no epochs reported yet", transform=ax.transAxes, ha="center")
    ax.set(
        xlabel=f"wall-clock time since the experiment started ({unit})",
        ylabel="validation accuracy",
        title=f"{name}: best validation accuracy so far",
    )
    ax.grid(alpha=0.3)


def _hyperparameters(fig, name: str, trials: list[dict]) -> None:
    axes = fig.subplots(1, 3, sharey=True)
    scored = [t for t in trials if _finite(t["best_val_acc"])]
    best = max(scored, key=lambda t: t["best_val_acc"], default=None)
    for ax, param in zip(axes, ("hidden_units", "lr", "momentum")):
        for status in [s for s in [*STYLES, None] if any(t["status"] == s for t in scored)]:
            group = [t for t in scored if t["status"] == status and t[param] is not None]
            style = _style(status)
            ax.scatter([t[param] for t in group], [t["best_val_acc"] for t in group],
                       s=22, color=style["color"], alpha=0.8, label=f"{style['label']} ({len(group)})")
        if best is not None and best[param] is not None:
            ax.scatter([best[param]], [best["best_val_acc"]], s=160, marker="*", color="gold",
                       edgecolor="black", zorder=3, label="best")
        if param == "lr":
            ax.set_xscale("log")
        ax.set_xlabel(param)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("best validation accuracy")
    if scored:
        fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right upper", fontsize="small")
    fig.suptitle(f"{name}: best validation accuracy by hyperparameter")


def write_report(results_dir: str | os.PathLike, name: str) -> list[Path]:
    """Write the three PNGs into `<results_dir>/<name>/` and return their paths."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    experiment = read_table(results_dir, "experiments", [name]).to_pylist()[0]
    trials = read_table(results_dir, "trials", [name]).to_pylist()
    epochs = sorted(read_table(results_dir, "epochs", [name]).to_pylist(), key=lambda e: (e["trial_id"], e["epoch"]))
    curves = defaultdict(list)
    for e in epochs:
        curves[e["trial_id"]].append((e["epoch"], e["val_acc"] if _finite(e["val_acc"]) else math.nan))

    plots = [
        (lambda fig: _learning_curves(fig, name, experiment["model"], trials, curves), (9, 5.5)),
        (lambda fig: _best_so_far(fig, name, epochs), (9, 5)),
        (lambda fig: _hyperparameters(fig, name, trials), (13, 4.5)),
    ]
    paths = []
    for file_name, (plot, size) in zip(PLOTS, plots):
        fig = Figure(figsize=size, layout="constrained")
        FigureCanvasAgg(fig)
        plot(fig)
        path = Path(results_dir) / name / file_name
        fig.savefig(path, dpi=DPI)
        paths.append(path)
    return paths
