"""The errors a user can cause, in one light module (no torch), so the CLI can catch them without loading a model.

Each is raised with one message that names the fix, before long work starts where that is possible.
"""


class ConfigError(ValueError):
    """A configuration a user wrote that cannot be run."""


class DatasetError(ValueError):
    """A dataset that cannot be loaded as asked; the message says how to fix it."""


class RunError(ValueError):
    """A run folder that is missing files or does not hold what it should."""


class PerturbationError(AssertionError):
    """An adversarial example outside its eps-ball or the valid input range: the attack is buggy."""


USER_ERRORS = (ConfigError, DatasetError, RunError, PerturbationError, FileNotFoundError)
