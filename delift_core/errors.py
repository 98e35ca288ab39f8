"""Errors whose messages are meant for the user as they are (the CLI and the app show them)."""


class DeliftError(Exception):
    """Base class: a problem with the user's input or set-up, with a message fit to show."""


class DataError(DeliftError, ValueError):
    """A problem with the user's data: the message names the file, line or row and the problem."""


class ModelError(DeliftError, RuntimeError):
    """A model could not be found or loaded; the message says which and why."""


class SelectionError(DeliftError, ValueError):
    """A selection cannot run as asked (budget, objective, missing set, kernel shape)."""
