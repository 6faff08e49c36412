"""The errors that mean "the input is wrong", as opposed to a bug in ddpm-jax.

Every exception the library raises for a bad config, missing or corrupt data, weights or
checkpoints, a workdir in use, or a diverged run derives from `UserError`. The command lines
(`ddpm_jax.cli`) print such an error as one line, `error: <message>`, without a traceback;
anything else is a bug and keeps its traceback. Messages therefore name what is wrong and what
to do (the config key, the file, the command), on one line.
"""


class UserError(Exception):
  """Bad input: reported on one line by the command lines, never as a traceback."""


class ConfigError(UserError, ValueError):
  """A config value is invalid or inconsistent; the message names the `config.` key."""


class DatasetError(UserError, RuntimeError):
  """A dataset is missing, unprepared, corrupt or misconfigured; the message says what to do."""


class InputError(UserError, ValueError):
  """An input file (an image, a mask, an `.npz` of samples) that cannot be used."""
