"""Errors that the CLI turns into one line and exit code 2: the setup, not the experiment,
is wrong. Here, not in the module that raises them, so that tracking and runtime need not
import each other."""


class RuntimeSetupError(RuntimeError):
    """Ray, MLflow or a cluster cannot be reached or used as configured."""
