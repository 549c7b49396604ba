"""The error type for mistakes a user can fix: bad config values, flags, paths, missing data.

Code that validates user input raises `UsageError` with a message that says what was wrong and
what would be right. The launchers (`jaxbud.cli.run`) print exactly these as one line and exit
with status 2. Any other exception is a bug or an environment failure: it keeps its traceback
and exits with status 1. `UsageError` subclasses ValueError, so `except ValueError` still
catches it.
"""


class UsageError(ValueError):
  """Bad user input (config, flags, paths, data): one line, exit status 2 in the launchers."""
