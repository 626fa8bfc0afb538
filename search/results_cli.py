"""The `hpsearch results` and `hpsearch report` subcommands: query the Parquet tables, print them, plot them.

User mistakes raise QueryError or ExperimentNotFound; search.cli.main turns them into one stderr line.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
from datetime import datetime

import pyarrow as pa
import pyarrow.csv

from search.errors import QueryError
from search.query import HELP as WHERE_HELP
from search.results import TABLES, list_experiments, query, read_table

LISTING = ["name", "model", "status", "trials", "best_val_acc", "test_acc", "wall_s"]
TRIAL_COLUMNS = ["trial_id", "experiment", "hidden_units", "lr", "momentum", "status", "epochs_run", "best_val_acc"]
DEFAULTS = {  # table -> (sort, top, columns) for whichever the user leaves out
    "experiments": ("started_at", None, LISTING),
    "trials": ("-best_val_acc", 10, TRIAL_COLUMNS),
    "epochs": ("experiment,trial_id,epoch", None, None),
}
MAX_CELL = 60  # characters of a string cell in --format table; error messages can be long
MATPLOTLIB_MISSING = "hpsearch report needs matplotlib: pip install 'hpsearch[plots]'"

EXAMPLES = """\
examples:
  hpsearch results                                   list the experiments
  hpsearch results mlp-1                             its 10 best trials
  hpsearch results --all --where "status == 'stopped_early'" --columns trial_id,asha_rung,asha_cutoff,asha_value
  hpsearch results mlp-1 --table epochs --where "trial_id == 'a1b2c3d4'" --format csv
  hpsearch results --table experiments --sort=-best_val_acc --columns name,model,best_val_acc,test_acc
"""


def _fmt_float(x: float) -> str:
    """Four significant digits, but never scientific notation for a large number (wall_s 12345 stays 12345)."""
    if not math.isfinite(x):
        return str(x)
    s = f"{x:.4g}"
    return f"{x:.0f}" if "e+" in s else s


def _cell(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, float):
        return _fmt_float(value)
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    text = str(value)
    first = text.splitlines()[0] if text else text
    return first if len(first) <= MAX_CELL and first == text else first[: MAX_CELL - 1] + "…"


def format_table(table: pa.Table) -> str:
    """Aligned plain text: numbers right-aligned, everything else left-aligned."""
    names = table.column_names
    numeric = [pa.types.is_integer(f.type) or pa.types.is_floating(f.type) for f in table.schema]
    cells = [[_cell(v) for v in table[name].to_pylist()] for name in names]
    widths = [max([len(name)] + [len(c) for c in col]) for name, col in zip(names, cells)]

    def line(row):
        return "  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(row, widths, numeric)).rstrip()

    rows = [line(names), line(["-" * w for w in widths])] + [line(row) for row in zip(*cells)]
    return "\n".join(rows) + "\n" + ("(no rows)\n" if table.num_rows == 0 else "")


def format_csv(table: pa.Table) -> str:
    out = io.BytesIO()
    pyarrow.csv.write_csv(table, out)
    return out.getvalue().decode()


def _json_value(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def format_json(table: pa.Table) -> str:
    """A JSON array with one object per line, so it reads well and still parses (NaN becomes null)."""
    records = [json.dumps({k: _json_value(v) for k, v in row.items()}, allow_nan=False) for row in table.to_pylist()]
    return "[\n" + ",\n".join(records) + "\n]\n" if records else "[]\n"


FORMATS = {"table": format_table, "csv": format_csv, "json": format_json}


def _columns(text: str) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()]


def run_results(args: argparse.Namespace) -> int:
    if args.names and args.all:
        raise QueryError(f"give experiment NAMEs or --all, not both; got --all and {' '.join(args.names)}")
    if not args.names and not list_experiments(args.results_dir):
        print(f"no experiments in {args.results_dir}")
        return 0
    table_name = args.table or ("trials" if args.names or args.all else "experiments")
    sort, top, columns = DEFAULTS[table_name]
    table = read_table(args.results_dir, table_name, args.names or None)
    matched = query(table, args.where, args.sort or sort, None, args.columns or columns)
    if args.format != "table":
        top = None  # a program reading CSV or JSON gets every row unless it asks for fewer
    shown = query(matched, top=top if args.top is None else args.top)
    sys.stdout.write(FORMATS[args.format](shown))
    if args.format == "table" and shown.num_rows < matched.num_rows:
        print(f"({shown.num_rows} of {matched.num_rows} rows; --top N shows more)")
    return 0


def run_report(args: argparse.Namespace) -> int:
    try:
        import matplotlib  # noqa: F401  (only to tell a missing optional dependency from a bug)
    except ModuleNotFoundError:
        print(MATPLOTLIB_MISSING, file=sys.stderr)
        return 2
    from search.report import write_report

    for path in write_report(args.results_dir, args.name):
        print(path)
    return 0


def register(subparsers) -> None:
    """Add `results` and `report` to the CLI's subparsers; each sets func(args) -> exit code."""
    p = subparsers.add_parser(
        "results",
        help="query the Parquet tables of one, several or all experiments",
        description="Without NAME: list the experiments. With NAMEs or --all: their best trials "
        "(or --table epochs / experiments), filtered, sorted and printed as a table, CSV or JSON.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("names", nargs="*", metavar="NAME", help="experiments to read (folders under --results-dir)")
    p.add_argument("--all", action="store_true", help="read every experiment under --results-dir")
    p.add_argument(
        "--results-dir", default="results", metavar="DIR", help="folder with one sub-folder per experiment (%(default)s)"
    )
    p.add_argument("--table", choices=TABLES, help="table to read (default: trials with NAME or --all)")
    p.add_argument("--where", metavar="EXPR", help=WHERE_HELP)
    p.add_argument(
        "--sort", metavar="COL", help="sort by COL; --sort=-COL for descending (with '=', so -COL is not read as a "
        "flag); several comma-separated, e.g. --sort=model,-best_val_acc",
    )
    p.add_argument(
        "--top", type=int, metavar="K", help="keep the first K rows (default: 10 trials as a table, all in CSV and JSON)"
    )
    p.add_argument("--columns", type=_columns, metavar="A,B,C", help="columns to show, in this order")
    p.add_argument("--format", choices=tuple(FORMATS), default="table", help="output format (%(default)s)")
    p.set_defaults(func=run_results)

    p = subparsers.add_parser(
        "report",
        help="plot one experiment: learning curves, best so far, hyperparameters (PNG)",
        description="Write learning_curves.png, best_so_far.png and hyperparameters.png into <results-dir>/NAME/.",
    )
    p.add_argument("name", metavar="NAME", help="experiment to plot")
    p.add_argument(
        "--results-dir", default="results", metavar="DIR", help="folder with one sub-folder per experiment (%(default)s)"
    )
    p.set_defaults(func=run_report)
