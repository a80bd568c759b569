"""Config checking in one style, for every package (data_prep, model, pretrain, finetune, evaluation).

The one import path of ``check``, ``flag_check`` and ``ConfigError``. It sits at the bottom of the import
graph with ``fileio`` and ``scoring`` (no project imports, no torch), so ``data_prep`` checks its build
arguments with the same ``check`` as the model and run configs without depending on ``model``. (A
config's ``validate()`` method is this checking; "validation" elsewhere means the held-out val split.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class ConfigError(ValueError):
    """A config value is out of range; the message names the field and what is allowed."""


def check(cond: bool, field_name: str, value: Any, allowed: str, error: type[Exception] = ConfigError) -> None:
    """Raise ``error("field=value: allowed")`` unless ``cond``. ``field_name`` is the full name the user typed
    (``model.mol.top_k`` in a run config, ``--seq-len`` on a command line), so nothing re-prefixes messages
    on the way up; ``error`` is the caller's error type (``data_prep`` raises its ``DataPrepError``)."""
    if not cond:
        raise error(f"{field_name}={value!r}: {allowed}")


def flag_check(config: Any, error: type[Exception] = ConfigError) -> Callable[[str, bool, str], None]:
    """``arg(name, ok, allowed)``: ``check`` for a config whose fields are command-line flags, naming the flag
    (``--seq-len`` for the field ``seq_len``) and the field's value."""

    def arg(name: str, ok: bool, allowed: str) -> None:
        check(ok, "--" + name.replace("_", "-"), getattr(config, name), allowed, error)

    return arg


__all__ = ["ConfigError", "check", "flag_check"]
