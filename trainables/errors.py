"""Project errors: things a user can cause. The CLI maps each class to one stderr line and an exit code."""


class HpsearchError(Exception):
    """Base of every error a user can cause; never shown with a traceback."""

    exit_code = 1


class ConfigError(HpsearchError):
    """An option, flag or YAML value breaks a rule."""

    exit_code = 2


class DataError(HpsearchError):
    """MNIST files are missing, corrupt, or of a format we refuse to read."""

    exit_code = 3
