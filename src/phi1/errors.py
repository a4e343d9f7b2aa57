"""User-facing errors: one clear line, non-zero exit, no traceback unless --debug."""


class Phi1Error(Exception):
    """An error caused by the user's input (a file, a flag, a config value).

    The message names what is wrong and how to fix it; the CLI prints it as one
    line and exits with status 2.
    """


class ConfigError(Phi1Error):
    """A configuration field has an unknown name, a wrong type or a bad value."""
