"""Errors whose messages are meant for the user as they are (the CLI and the app show them)."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["DataError", "DeliftError", "KernelError", "MissingDependencyError", "ModelError",
           "SelectionError", "SettingError", "optional_import"]


class DeliftError(Exception):
    """Base class: a problem with the user's input or set-up, with a message fit to show."""


class DataError(DeliftError, ValueError):
    """A problem with the user's data: the message names the file, line or row and the problem."""


class ModelError(DeliftError, RuntimeError):
    """A model could not be found or loaded; the message says which and why."""


class SelectionError(DeliftError, ValueError):
    """A selection cannot run as asked (budget, objective, missing set, kernel shape)."""


class KernelError(SelectionError):
    """A kernel does not fit the data (shape, rows, content) or holds bad values; the message
    names the kernel (its file where there is one) and the problem."""


class SettingError(SelectionError):
    """An engine setting (:mod:`delift_core.settings`) has a value it does not allow; the message
    names the setting, its CLI option and the allowed values. A SelectionError (and so a
    ValueError) for the callers that caught the checks it replaces."""


class MissingDependencyError(DeliftError, ImportError):
    """An optional package is not installed; the message names the extra that installs it."""


def optional_import(module: str, extra: str, purpose: str,
                    package: str | None = None) -> ModuleType:
    """Import a module of an optional extra (``studio``, ``eval``), or say how to install it.

    The engine's own dependencies are imported plainly; this is for the few features that need a
    package only the studio or evaluation extra installs, so that a bare install fails with a
    message naming the extra rather than a ``ModuleNotFoundError``. ``package`` is the name pip
    knows the module by, where it differs (``umap`` comes from ``umap-learn``).
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        missing = (e.name or module).split(".")[0]
        if missing == module.split(".")[0] and package:
            missing = package
        raise MissingDependencyError(
            f"{purpose} needs the package '{missing}', which is not installed; install it with: "
            f'pip install "delift-studio[{extra}]"', name=e.name or module) from None
