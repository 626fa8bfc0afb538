"""`hpsearch run | resume | results | report | evaluate | train | download`.

The flags of `run` are generated from ExperimentSpec (and those of `train` from TrainConfig), so the
dataclasses are the help and a concept has one name from flag to Parquet column. User errors become
one line on stderr and the exit code of their error class; never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from trainables import __version__
from trainables.errors import ConfigError, HpsearchError
from trainables.config import DEFAULT_HIDDEN_UNITS, DEVICES, MODELS, TrainConfig

EXIT_INTERRUPTED = 130
EXIT_NO_RESULT = 1

TRAIN_HELP = {
    "model": "network to train",
    "hidden_units": "hidden width (default: the seed's, mlp 10 / cnn 128)",
    "lr": "SGD learning rate",
    "momentum": "SGD momentum",
    "batch_size": "mini-batch size",
    "epochs": "epochs to train",
    "seed": "seed of the model init and the shuffling",
    "device": "cpu, cuda, or auto (cuda when available)",
    "num_threads": "torch CPU threads (default: torch's choice)",
}


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line, like every other user error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_dataclass_flags(parser, fields, helps: dict[str, str], defaults: dict) -> None:
    """One flag per field; defaults stay None so a YAML value is only overridden by an explicit flag."""
    for f in fields:
        kind = str(f.type).split("|")[0].strip()
        help_text = helps[f.name]
        shown = defaults.get(f.name, f.default)
        if shown is not None and kind != "bool":
            help_text += f" (default: {shown:.4g})" if isinstance(shown, float) else f" (default: {shown})"
        if kind == "bool":
            parser.add_argument(_flag(f.name), action="store_true", default=None, help=help_text)
            continue
        choices = f.metadata.get("choices") if hasattr(f, "metadata") else None
        parser.add_argument(
            _flag(f.name),
            type={"int": int, "float": float, "str": str}[kind],
            default=None,
            choices=choices,
            metavar=f.name.upper() if not choices else None,
            help=help_text,
        )


def build_parser() -> argparse.ArgumentParser:
    from search import results_cli
    from search.spec import FIELDS

    parser = Parser(prog="hpsearch", description="Hyperparameter search for MNIST digit recognizers (Ray Tune + TPE + ASHA).")
    parser.add_argument("--version", action="version", version=f"hpsearch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    run = sub.add_parser("run", help="start a new search", description="Start a new search; flags override --config.")
    run.add_argument("--config", metavar="YAML", help="options from a YAML file (keys as the flags, with _)")
    run.add_argument("--smoke", action="store_true", help="tiny preset: 4 trials x 2 epochs on 2,000 images (< 1 min)")
    run.add_argument("--verbose", type=int, choices=(0, 1, 2), default=1, help="0 quiet, 1 trial table, 2 every result")
    run.add_argument("--resume", action="store_true",
                     help="if experiment --name exists, continue it (as `hpsearch resume`) instead of refusing")
    _add_dataclass_flags(run, FIELDS.values(), {k: f.metadata["help"] for k, f in FIELDS.items()}, {})
    run.set_defaults(func=cmd_run)

    resume = sub.add_parser("resume", help="continue an interrupted search, or extend a finished one")
    resume.add_argument("name", help="experiment name")
    resume.add_argument("--results-dir", default="results", help="folder holding the experiment (default: results)")
    resume.add_argument("--num-samples", type=int, default=None, help="extend a finished search by N more trials")
    resume.add_argument("--address", default=None, help="Ray cluster to join (default: a local Ray)")
    resume.add_argument("--verbose", type=int, choices=(0, 1, 2), default=1)
    resume.set_defaults(func=cmd_resume)

    evaluate = sub.add_parser("evaluate", help="re-run the test evaluation of an experiment's saved best model")
    evaluate.add_argument("name", help="experiment name")
    evaluate.add_argument("--results-dir", default="results")
    evaluate.add_argument("--device", choices=DEVICES, default="auto")
    evaluate.set_defaults(func=cmd_evaluate)

    train = sub.add_parser("train", help="train one configuration without Ray (the seed's sections 4 and 6)")
    _add_dataclass_flags(train, dataclasses.fields(TrainConfig), TRAIN_HELP, {"hidden_units": None})
    train.add_argument("--data-dir", default=None, help="MNIST folder or file (default: the bundled copy)")
    train.add_argument("--save", metavar="PATH", default=None, help="save the trained model (state dict + config)")
    train.set_defaults(func=cmd_train)

    download = sub.add_parser(
        "download", help="fetch MNIST from the usual mirrors into a folder (opt-in: a copy ships with the package)"
    )
    download.add_argument("dest", help="folder for the four IDX files; then use it as --data-dir or $HPSEARCH_DATA_DIR")
    download.add_argument("--mirror", action="append", metavar="URL", help="base URL to try instead (repeatable)")
    download.set_defaults(func=cmd_download)

    results_cli.register(sub)
    return parser


def cmd_run(args) -> int:
    from search import runner
    from search.spec import FIELDS, build_spec

    options = {name: getattr(args, name) for name in FIELDS}
    spec = build_spec(options, config=args.config, smoke=args.smoke)
    return _report(runner.run(spec, verbose=args.verbose, resume_existing=args.resume))


def cmd_resume(args) -> int:
    from search import runner

    if args.num_samples is not None and args.num_samples < 1:
        raise ConfigError(f"--num-samples must be >= 1, got {args.num_samples}")
    summary = runner.resume(args.name, args.results_dir, args.num_samples, args.verbose, args.address)
    return _report(summary)


def _report(summary) -> int:
    """Print the summary; non-zero when interrupted or when no trial produced a result."""
    print("\n".join(summary.lines()))
    if summary.status == "interrupted":
        return EXIT_INTERRUPTED
    return 0 if summary.best else EXIT_NO_RESULT


def cmd_evaluate(args) -> int:
    from search import runner

    test_loss, test_acc = runner.evaluate(args.name, args.results_dir, args.device)
    print(f"test_acc={test_acc:.4f} test_loss={test_loss:.4f}")
    return 0


def cmd_train(args) -> int:
    from trainables.data import load_mnist
    from trainables.train import Trainer, save_model

    options = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if getattr(args, f.name) is not None}
    model = options.get("model", TrainConfig.model)
    if model in MODELS:
        options.setdefault("hidden_units", DEFAULT_HIDDEN_UNITS[model])
    cfg = TrainConfig(**options)
    data = load_mnist(args.data_dir)
    trainer = Trainer(cfg, data)
    print(f"training {cfg.model} hidden_units={cfg.hidden_units} lr={cfg.lr} momentum={cfg.momentum} "
          f"batch_size={cfg.batch_size} on {trainer.device} for {cfg.epochs} epochs", flush=True)

    def show(m: dict, _state) -> None:
        print(f"epoch {m['epoch']:>3}/{cfg.epochs}  train_loss {m['train_loss']:.4f}  train_acc {m['train_acc']:.4f}  "
              f"val_loss {m['val_loss']:.4f}  val_acc {m['val_acc']:.4f}  {m['epoch_s']:.1f}s", flush=True)

    result = trainer.fit(show)
    if result.status != "completed":
        print(f"training {result.status} at epoch {trainer.epoch} (non-finite loss)")
    test_loss, test_acc = trainer.test(data)
    print(f"test_acc {test_acc:.4f}  test_loss {test_loss:.4f}")
    if args.save:
        Path(args.save).parent.mkdir(parents=True, exist_ok=True)
        save_model(args.save, trainer.model, cfg, extra={"metrics": {"test_acc": test_acc, "test_loss": test_loss}})
        print(f"saved {args.save}")
    return 0


def cmd_download(args) -> int:
    from trainables.data import MIRRORS, download_mnist

    print(f"MNIST verified in {download_mnist(args.dest, tuple(args.mirror or MIRRORS))}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except HpsearchError as e:
        print(f"hpsearch: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("hpsearch: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
