"""Errors that the CLI turns into one line: `RuntimeSetupError` (exit code 2: the setup, not
the experiment, is wrong), `SignatureError` (exit code 2: state that will not be loaded) and
`TrialsFailed` (exit code 1). Here, not in the modules that raise them, so that tracking and
runtime need not import each other."""


class RuntimeSetupError(RuntimeError):
    """Ray, MLflow or a cluster cannot be reached or used as configured."""


class TrialsFailed(RuntimeError):
    """Trials of a run failed after their retries (the message names the first)."""


class SignatureError(RuntimeError):
    """State in the store is not signed with this machine's key (`maestro.signing`)."""
