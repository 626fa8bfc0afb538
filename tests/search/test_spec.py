"""ExperimentSpec rules, YAML handling and the CLI's one-line errors for bad input."""

import json
import math
import subprocess
import sys

import pytest

from search.cli import main
from search.errors import SpecError
from search.space import build_space, seed_point
from search.spec import FIELDS, ExperimentSpec, build_spec, load_spec


def test_defaults_are_the_seed_space():
    spec = build_spec({"name": "x"})
    dims = {d.name: d for d in build_space(spec)}
    assert (dims["hidden_units"].low, dims["hidden_units"].high, dims["hidden_units"].step) == (50, 200, 10)
    assert dims["lr"].kind == "loguniform"
    assert math.isclose(dims["lr"].low, math.exp(-5)) and math.isclose(dims["lr"].high, math.exp(-1))
    assert (dims["momentum"].low, dims["momentum"].high) == (0.0, 1.0)


def test_n_initial_points_default_scales_with_budget():
    assert build_spec({"name": "a", "num_samples": 50}).n_initial_points == 10
    assert build_spec({"name": "b", "num_samples": 20}).n_initial_points == 6
    assert build_spec({"name": "c", "num_samples": 4}).n_initial_points == 3
    assert build_spec({"name": "d", "num_samples": 50, "n_initial_points": 20}).n_initial_points == 20


def test_yaml_then_flags_override(tmp_path):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("model: cnn\nnum_samples: 7\nlr_max: 1\nmax_epochs: 3\n")
    spec = build_spec({"num_samples": 9, "name": "y"}, config=cfg)
    assert (spec.model, spec.num_samples, spec.lr_max, spec.max_epochs) == ("cnn", 9, 1.0, 3)


def test_smoke_preset_is_small():
    spec = build_spec({"name": "s"}, smoke=True)
    assert spec.num_samples <= 4 and spec.max_epochs <= 2 and spec.subset <= 2000


def test_spec_round_trips_through_its_saved_file(tmp_path):
    spec = build_spec({"name": "r", "results_dir": str(tmp_path), "gpus_per_trial": 0.25})
    spec.save(tmp_path / "r")
    assert load_spec(tmp_path / "r") == spec
    assert json.loads((tmp_path / "r" / "spec.json").read_text())["gpus_per_trial"] == 0.25


def test_seed_point_is_clipped_into_the_space():
    mlp = build_spec({"name": "m"})
    assert seed_point(mlp) == {"hidden_units": 50.0, "lr": 0.1, "momentum": 0.0}
    cnn = build_spec({"name": "c", "model": "cnn"})
    assert seed_point(cnn)["hidden_units"] == 128.0


def test_spec_is_frozen():
    spec = build_spec({"name": "f"})
    with pytest.raises(AttributeError):
        spec.num_samples = 3


BAD = [
    (["--model", "rnn"], "argument --model: invalid choice: 'rnn'"),
    (["--num-samples", "0"], "num_samples must be >= 1, got 0"),
    (["--grace-period", "5", "--max-epochs", "3"], "grace_period must be <= max_epochs, got 5 > 3"),
    (["--lr-min", "0"], "lr_min must be > 0, got 0.0"),
    (["--lr-max", "-1"], "lr_max must be > 0, got -1.0"),
    (["--lr-min", "0.5", "--lr-max", "0.1"], "lr_min must be < lr_max, got 0.5 >= 0.1"),
    (["--momentum-max", "1.5"], "momentum_max must be in [0, 1], got 1.5"),
    (["--momentum-min", "-0.1"], "momentum_min must be in [0, 1], got -0.1"),
    (["--hidden-units-min", "0"], "hidden_units_min must be >= 1, got 0"),
    (["--hidden-units-min", "300"], "hidden_units_min must be <= hidden_units_max, got 300 > 200"),
    (["--gpus-per-trial", "-0.5"], "gpus_per_trial must be >= 0, got -0.5"),
    (["--name", "a/b"], "name must be letters, digits and . _ = + - (no path separator, no '..'), got 'a/b'"),
    (["--name", "a..b"], "got 'a..b'"),
    (["--name", ".."], "got '..'"),
    (["--num-samples", "many"], "argument --num-samples: invalid int value: 'many'"),
]


def cli(argv: list[str]) -> int:
    """main()'s exit code, whether it returns it or argparse exits with it."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


@pytest.mark.parametrize("argv,message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_flag_gives_one_line_and_nonzero_exit(argv, message, capsys, tmp_path):
    assert cli(["run", "--results-dir", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not list(tmp_path.iterdir()), "a rejected spec must not create an experiment"


def test_unreadable_yaml(capsys, tmp_path):
    assert cli(["run", "--config", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot be read" in err and "missing.yaml" in err


@pytest.mark.parametrize(
    ("text", "expected"),
    [("model: [mlp\n", "not valid YAML"), ("model: mlp\nmax_epoch: 3\n", "unknown key 'max_epoch'")],
    ids=["invalid", "unknown_key"],
)
def test_bad_yaml_file(capsys, tmp_path, text, expected):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(text)
    assert cli(["run", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err


def test_wrong_yaml_type():
    with pytest.raises(SpecError, match="num_samples must be int, got '3'"):
        build_spec({"name": "t", "num_samples": "3"})


def test_every_spec_field_has_help_and_a_flag():
    for name, f in FIELDS.items():
        assert f.metadata["help"], name
    ExperimentSpec(name="ok")


def test_cli_error_has_no_traceback_in_a_real_process(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "search.cli", "run", "--num-samples", "0", "--results-dir", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr == "hpsearch: error: num_samples must be >= 1, got 0\n"
