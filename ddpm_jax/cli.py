"""Running a command line so that bad input is one clear line and only bugs show a traceback.

`run(main)` replaces `absl.app.run(main)`:
* flags and config files are parsed first; an unknown config key, a value of the wrong type, a
  missing config file or one that fails to load is `error: <what, where>` on stderr (exit 2);
* a `ddpm_jax.errors.UserError` raised by the job (an invalid config value, missing data or
  weights, a corrupt or mismatched checkpoint, a workdir in use, a diverged run), a missing or
  unreadable file and a full disk are `error: <message>` (exit 1);
* Ctrl-C outside the training loop (which checkpoints and returns by itself) is one line too
  (exit 130);
* any other exception is a bug and keeps its traceback.
`DDPM_JAX_TRACEBACK=1` in the environment shows the traceback of every error.
"""

from __future__ import annotations

import errno
import os
import re
import sys
import traceback

from absl import app, flags

from ddpm_jax.errors import UserError

TRACEBACK_ENV = 'DDPM_JAX_TRACEBACK'
USAGE_EXIT = 2  # Malformed command line (flags, config file, config overrides).
ERROR_EXIT = 1  # A user error found while running.


def env_flag(name: str) -> bool:
  """Whether the environment variable `name` says yes (1, true, yes or on)."""
  return os.environ.get(name, '').strip().lower() in ('1', 'true', 'yes', 'on')


def one_line(message: str) -> str:
  """`message` with its line breaks (and the indentation after them) folded into spaces."""
  return re.sub(r'\s*\n\s*', ' ', str(message).strip())


def fail(message: str, status: int = ERROR_EXIT):
  """Prints `error: message` on one line to stderr and exits with `status`."""
  sys.stdout.flush()
  print(f'error: {one_line(message)}', file=sys.stderr, flush=True)
  sys.exit(status)


def is_user_error(e: BaseException) -> bool:
  """Whether `e` is the input's fault (reported on one line) rather than a bug."""
  if isinstance(e, (UserError, FileNotFoundError, PermissionError, IsADirectoryError,
                    NotADirectoryError)):
    return True
  return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def _user_message(e: BaseException) -> str:
  if isinstance(e, OSError) and not isinstance(e, UserError) and e.filename:
    return f'{e.strerror or e}: {e.filename}'
  return str(e) or type(e).__name__


# ---------------------------------------------------------------------------------------------
# Flags and config files.


def _config_flag_names(flag_values) -> list[str]:
  """Names of the config-file flags (`--config`, `--sweep`'s base config, ...)."""
  return [name for name in flag_values if hasattr(type(flag_values[name]), 'config_filename')]


def _frame_in(tb, path: str) -> str:
  """'file:line' of the innermost traceback frame in `path` (the config file), or ''."""
  real = os.path.realpath(path) if path else None
  frames = [f for f in traceback.extract_tb(tb) if os.path.realpath(f.filename) == real]
  return f'{frames[-1].filename}:{frames[-1].lineno}' if frames else ''


def _config_paths(argv, names) -> list[str]:
  """The config files named on the command line (`--config=PATH[:ARG]`)."""
  return [a.split('=', 1)[1].split(':', 1)[0] for a in argv for n in names
          if a.startswith(f'--{n}=')]


def _override_args(argv, key: str) -> list[str]:
  """The `--config.a.b=v` arguments of `argv` whose dotted path contains `key`."""
  return [a for a in argv if a.startswith('--') and '.' in a.split('=')[0]
          and key in a.split('=')[0].lstrip('-').split('.')[1:]]


def describe_parse_error(e: BaseException, argv) -> str:
  """One line for an exception raised while parsing `argv` (flags, config files, overrides)."""
  if isinstance(e, flags.Error):
    return f'{one_line(e)} (--helpshort lists the flags)'
  if isinstance(e, SyntaxError):
    return f'{e.filename}:{e.lineno}: SyntaxError: {e.msg}'
  if isinstance(e, (AttributeError, KeyError)):
    text = e.args[0] if e.args else str(e)
    text = text.args[0] if isinstance(text, BaseException) and text.args else str(text)
    lines = [l.strip().strip('\'"') for l in str(text).split('\n') if l.strip()]
    key = lines[0] if lines else str(e)
    bad = _override_args(argv, key)
    hint = f' ({lines[1]})' if len(lines) > 1 else ''
    return (f'{bad[0] if bad else key}: the config has no key {key!r}{hint}' if bad or hint
            else f'{type(e).__name__}: {one_line(text)}')
  return f'{type(e).__name__}: {one_line(e)}'


def parse_flags(argv):
  """`FLAGS(argv)` with one line for each kind of bad command line; returns the positional
  arguments (what `app.run` hands to `main`)."""
  flag_values = flags.FLAGS
  names = _config_flag_names(flag_values)
  try:
    rest = flag_values(argv)
  except Exception as e:  # pylint: disable=broad-except  (absl, ml_collections, config code)
    if env_flag(TRACEBACK_ENV):
      raise
    where = _frame_in(e.__traceback__, next(iter(_config_paths(argv, names)), ''))
    if where and not isinstance(e, SyntaxError):  # Raised by the config file's own code.
      fail(f'{where}: {type(e).__name__}: {one_line(e)}', USAGE_EXIT)
    fail(describe_parse_error(e, argv), USAGE_EXIT)
  for name in names:  # A config file that failed to load is only reported when read.
    try:
      hasattr(flag_values[name].value, 'keys')
    except OSError as e:
      if env_flag(TRACEBACK_ENV):
        raise
      path = flag_values[name].config_filename.split(':', 1)[0]
      if path and not os.path.exists(path):
        fail(f'--{name}={path}: config file not found', USAGE_EXIT)
      cause = e.__cause__ or e
      fail(f'--{name}={path}: could not be loaded: {one_line(cause)}', USAGE_EXIT)
  return rest


# ---------------------------------------------------------------------------------------------
# The job.


def guarded(main, arguments: bool = True):
  """`main(argv)` with user errors and Ctrl-C reported on one line (see the module docstring);
  without `arguments`, `main()`, and positional arguments on the command line are refused."""

  def wrapped(argv):
    try:
      if not arguments and len(argv) > 1:
        raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
      return main(argv) if arguments else main()
    except (KeyboardInterrupt, Exception) as e:  # pylint: disable=broad-except
      if env_flag(TRACEBACK_ENV):
        raise
      if isinstance(e, app.UsageError):
        fail(f'{e} (--helpshort lists the flags)', USAGE_EXIT)
      if isinstance(e, KeyboardInterrupt):
        fail('interrupted (Ctrl-C)', 130)
      if not is_user_error(e):
        raise
      fail(_user_message(e))

  return wrapped


def run(main, arguments: bool = True) -> None:
  """`absl.app.run(main)` with one-line errors for bad input (see `guarded` and the module
  docstring)."""
  app.run(guarded(main, arguments), flags_parser=parse_flags)
