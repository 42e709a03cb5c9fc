"""The errors a user can fix, and how an entry point reports them: one line naming the problem and
the fix, a non-zero exit, no traceback (``DAQKD_TRACEBACK=1`` or ``HYDRA_FULL_ERROR=1`` brings it back)."""
from __future__ import annotations

import inspect
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("daqkd")


class DaqkdError(Exception):
    """Base of every error whose message tells the user what to change."""


class ConfigError(DaqkdError, ValueError):
    """A config value that cannot work: names the key, the value, what is allowed and an example."""


class DataError(DaqkdError, ValueError):
    """A data file that cannot be read: names the file and what to do."""


class DatasetNotFoundError(DaqkdError, FileNotFoundError):
    """A data set that is not where it was looked for: names every place and how to get it."""


class CheckpointError(DaqkdError, RuntimeError):
    """A checkpoint that is missing, corrupt or does not fit the model."""


class ExportError(DaqkdError, ValueError):
    """A model that cannot take the requested export form: says what, why and what to do instead."""


class TrainingDiverged(DaqkdError, FloatingPointError):
    """A NaN or infinite loss: says which settings to lower."""


class Preempted(DaqkdError):
    """SIGTERM (SLURM pre-emption, ``kill``): the run saved a checkpoint and stopped; says how to resume."""

    exit_code = 143  # 128 + SIGTERM, what a scheduler expects of a terminated job


def unknown_keys(given, fn, exclude=()) -> tuple[list[str], list[str]]:
    """(keys of ``given`` that ``fn`` does not take, the keys it takes), from its signature (a
    class: its constructor); a callable that takes ``**kwargs`` takes every key."""
    params = inspect.signature(fn).parameters.values()
    names = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in exclude]
    open_ended = any(p.kind == p.VAR_KEYWORD for p in params)
    return ([] if open_ended else [k for k in given if k not in names]), names


def nearest(word: str, options) -> str | None:
    """The option closest to ``word`` in spelling, if any is close (difflib's ratio ≥ 0.6)."""
    import difflib

    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return close[0] if close else None


def check_keys(given, fn, where: str) -> None:
    """A ConfigError when ``given`` holds a key that ``fn`` does not take, naming the nearest key it
    takes (every ``_target_`` block; the data sources' options use ``unknown_keys`` with their own words)."""
    unknown, names = unknown_keys(given, fn)
    if unknown:
        near = nearest(unknown[0], names)
        which = f"did you mean {where}.{near}?" if near else f"its keys: {', '.join(names) or '(none)'}"
        raise ConfigError(f"{where}.{unknown[0]} is not a parameter of {getattr(fn, '__qualname__', fn)}; {which}")


def user_error(error: BaseException) -> DaqkdError | None:
    """The DaqkdError behind ``error`` (Hydra wraps errors raised while instantiating), if any."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, DaqkdError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def show_tracebacks() -> bool:
    return any(os.environ.get(k, "") not in ("", "0") for k in ("DAQKD_TRACEBACK", "HYDRA_FULL_ERROR"))


@contextmanager
def reported_as_one_line(exit_code: int = 2) -> Iterator[None]:
    """Around an entry point's work: a user error becomes one line on stderr and ``exit_code``."""
    try:
        yield
    except Exception as e:
        err = user_error(e)
        if err is None or show_tracebacks():
            raise
        print(f"daqkd: error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(getattr(err, "exit_code", exit_code)) from None
