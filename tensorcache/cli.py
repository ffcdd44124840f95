"""What every command line shares: a mistake is one line on stderr and exit status 2 (the
traceback with ``--debug`` or ``TENSORCACHE_DEBUG=1``), INFO logs (orbax's saves and restores,
JAX's accelerator probe) only with ``--verbose``, and an interrupted training run
exits with ``128 + signal`` after saying where it stopped.

``cli.run(main)`` replaces ``absl.app.run(main)``; ``cli.guard`` wraps a ``main`` that parses
its own arguments (``convert``).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
from typing import Callable

DEBUG_ENV = "TENSORCACHE_DEBUG"


class UserError(Exception):
  """A mistake the user can fix from the message alone (shown without a traceback)."""


def _user_errors() -> tuple[type[BaseException], ...]:
  from absl import app

  return (UserError, ValueError, FileNotFoundError, NotADirectoryError, FileExistsError,
          FloatingPointError, app.UsageError)


def _message(error: BaseException) -> str:
  """One line: nested exception arguments unwrapped (ml_collections wraps its suggestion in
  a KeyError inside an AttributeError), an embedded traceback cut to its first line (which
  names the flag) and its last (the error), newlines folded."""
  while error.args and isinstance(error.args[0], BaseException):
    error = error.args[0]
  text = error.args[0] if len(error.args) == 1 and isinstance(error.args[0], str) else str(error)
  lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
  if any(line.startswith("Traceback (most recent call last)") for line in lines):
    flag = lines[0].split(": Error whilst")[0].rstrip(":")
    lines = [f"{flag}: {re.sub(r'^[A-Za-z_.]*(Error|Exception): ', '', lines[-1])}"]
  return "; ".join(lines)


def fail(error: BaseException, debug: bool) -> None:
  """Re-raises ``error`` under ``debug``; else prints it as one line and exits with 2."""
  if debug or os.environ.get(DEBUG_ENV, "") not in ("", "0"):
    raise error
  print(f"error: {_message(error)}  (--debug shows the traceback)", file=sys.stderr, flush=True)
  sys.exit(2)


class _Quiet(logging.Filter):
  """Keeps warnings and errors; drops INFO and DEBUG records (orbax logs tens per save or
  restore, JAX its accelerator probe, the dispatch its fallbacks). What a user needs to
  see, the commands print."""

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING


def quiet_logs(verbose: bool) -> None:
  """Installs the INFO filter on every root handler (absl's included)."""
  if verbose:
    return
  from absl import logging as absl_logging

  handlers = set(logging.getLogger().handlers) | {absl_logging.get_absl_handler()}
  for handler in handlers:
    handler.addFilter(_Quiet())


def start_backends(verbose: bool) -> None:
  """Initialises JAX's backends now, with the C++ messages of the accelerator probe (libtpu
  prints several lines on a machine without a TPU) held back unless ``verbose``; they are
  shown if initialisation fails. Multi-host runs call it after ``jax.distributed.initialize``."""
  import jax

  if verbose:
    jax.devices()
    return
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as held:
    os.dup2(held.fileno(), 2)
    try:
      jax.devices()
    except Exception:
      os.dup2(saved, 2)
      held.seek(0)
      sys.stderr.write(held.read().decode(errors="replace"))
      raise
    finally:
      os.dup2(saved, 2)
      os.close(saved)


def _exit_interrupted(error) -> None:
  print(error, file=sys.stderr, flush=True)
  sys.exit(128 + int(error.signum))


def guard(main: Callable, debug: bool, verbose: bool, *args, start: bool = True):
  """Calls ``main(*args)`` with quiet logs and the one-line error handling; ``start``:
  initialise the backends quietly first (``start_backends``)."""
  from tensorcache.train import Interrupted

  quiet_logs(verbose)
  try:
    if start:
      start_backends(verbose)
    return main(*args)
  except Interrupted as e:
    _exit_interrupted(e)
  except _user_errors() as e:
    fail(e, debug)
  except ImportError as e:  # an optional extra: the library's message names the install command
    if "pip install" not in str(e):
      raise
    fail(e, debug)


def _parse(argv: list[str]):
  from absl import flags

  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:  # a --config.a.b override naming no field
    wrong = [a for a in argv if a.startswith("--config.")]
    where = f" ({' '.join(wrong)})" if wrong else ""
    fail(UserError(f"unknown config field{where}: {_message(e)}"), "--debug" in argv)
  except (flags.Error, ValueError) as e:
    fail(e, "--debug" in argv)


def run(main: Callable[[list[str]], None], start: bool = True) -> None:
  """``absl.app.run(main)`` with ``--debug`` / ``--verbose`` and the one-line errors;
  ``start=False`` leaves the backends to ``main`` (``start_backends``)."""
  from absl import app, flags

  flags.DEFINE_bool("debug", False, f"Show the full traceback of an error (also {DEBUG_ENV}=1).")
  flags.DEFINE_bool("verbose", False, "Show library INFO logs (orbax saves/restores, JAX's backend probe).")

  def wrapped(argv):
    return guard(main, flags.FLAGS.debug, flags.FLAGS.verbose, argv, start=start)

  app.run(wrapped, flags_parser=_parse)


def add_arguments(parser) -> None:
  """``--debug`` and ``--verbose`` for an ``argparse`` command line."""
  parser.add_argument("--debug", action="store_true", help=f"show the traceback of an error (also {DEBUG_ENV}=1)")
  parser.add_argument("--verbose", action="store_true", help="show library INFO logs")

