"""Errors of the search side. They derive from trainables.errors, so the CLI maps every project error alike."""

from trainables.errors import ConfigError, HpsearchError


class QueryError(ConfigError):
    """A --where, --sort, --columns, --top or --table value the results tables cannot answer."""


class ExperimentNotFound(HpsearchError):
    """A named experiment has no tables under the results directory."""

    exit_code = 4


class SpecError(ConfigError):
    """An experiment option (flag, YAML key or value) breaks a rule."""


class ExperimentExists(HpsearchError):
    """Refuse to overwrite an experiment (Ray issue #35812): resume it or pick a new name."""

    exit_code = 4


class ClusterError(HpsearchError):
    """The Ray cluster is unreachable or cannot satisfy the resources a trial asks for."""

    exit_code = 5
