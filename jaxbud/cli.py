"""What every launcher shares: flag parsing, and user errors as one line with exit status 2.

Only `jaxbud.errors.UsageError` (and bad flags) become that one line. Anything else raised by a
launcher is a bug or an environment failure: it keeps its traceback and exits with status 1.
"""
import logging as std_logging
import os
import sys

from absl import app
from absl import flags
from absl import logging
import jax
import ml_collections
from ml_collections import config_flags

from jaxbud import preempt
from jaxbud.errors import UsageError

MULTIHOST = flags.DEFINE_bool(
    'multihost', False, 'Call jax.distributed.initialize() first (TPU pods, multi-host GPU, '
    'several local CPU processes); without the three flags below, the coordinator and process '
    'ids come from the environment (TPU VM metadata, SLURM, ...).')
COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'With --multihost: host:port of process 0, which serves the '
    'distributed runtime (give it with --num_processes and --process_id).')
NUM_PROCESSES = flags.DEFINE_integer(
    'num_processes', None, 'With --multihost: how many processes take part.', lower_bound=1)
PROCESS_ID = flags.DEFINE_integer(
    'process_id', None, 'With --multihost: this process\'s index in [0, num_processes).',
    lower_bound=0)


class _QuietLibraries(std_logging.Filter):
  """Drops the INFO chatter of orbax and jax internals so the progress lines stay readable."""
  NOISY = (f'{os.sep}orbax{os.sep}', f'{os.sep}jax{os.sep}_src{os.sep}')

  def filter(self, record):
    return record.levelno >= std_logging.WARNING or not any(
        n in record.pathname for n in self.NOISY)


def define_config(help_: str, default=None):
  """--config: an ml_collections config file, locked so a mistyped field is an error."""
  config = config_flags.DEFINE_config_file('config', default, help_, lock_config=True)
  if default is None:
    flags.mark_flag_as_required('config')
  return config


def config_and_workdir(config_help: str, workdir_help: str, config_default=None,
                       workdir_default=None):
  """The --config and --workdir flags of the launchers that write a run folder."""
  workdir = flags.DEFINE_string('workdir', workdir_default, workdir_help)
  if workdir_default is None:
    flags.mark_flag_as_required('workdir')
  return define_config(config_help, config_default), workdir


# Flags and config fields that hold paths: `~` and $VARIABLES in them are expanded (tfds and
# Orbax would otherwise make a folder named `~`).
PATH_FLAGS = ('workdir', 'src', 'out')
CONFIG_PATH_FIELDS = ('data_dir', 'manual_dir', 'base_workdir', 'spec_file')


def expand_path(path: str) -> str:
  """`path` with `~` and environment variables expanded ('' stays '')."""
  return os.path.expandvars(os.path.expanduser(path)) if path else path


def expand_config_paths(config: ml_collections.ConfigDict) -> None:
  """Expands `~` and $VARIABLES in every path field of `config` (CONFIG_PATH_FIELDS), in place."""
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      expand_config_paths(value)
    elif key in CONFIG_PATH_FIELDS and isinstance(value, str):
      config[key] = expand_path(value)


def fail(message: str, status: int = 2):
  """Prints one line to stderr and exits with `status` (2: a usage error)."""
  print(f'error: {" ".join(str(message).split())}', file=sys.stderr)
  sys.exit(status)


def _parse(argv):
  try:
    rest = flags.FLAGS(argv)
  except AttributeError as e:  # ml_collections: --config.<field> that the config lacks
    fail(f'the config has no field {str(e).strip(chr(34))} (check the --config.* flags)')
  except (flags.Error, KeyError, TypeError, ValueError) as e:
    fail(f'bad flag: {e}')
  if 'config' in flags.FLAGS:
    if flags.FLAGS['config'].present:
      try:  # ml_collections defers a failed load of the file to the first use of the config
        flags.FLAGS.config.keys()
      except OSError as e:
        fail(f'could not load --config: {e}')
    if flags.FLAGS.config is not None:
      expand_config_paths(flags.FLAGS.config)
  for name in PATH_FLAGS:
    if name in flags.FLAGS and isinstance(flags.FLAGS[name].value, str):
      flags.FLAGS[name].value = expand_path(flags.FLAGS[name].value)
  return rest


def initialize_distributed():
  """jax.distributed.initialize from the three flags, or from the environment without them."""
  given = {'coordinator_address': COORDINATOR.value, 'num_processes': NUM_PROCESSES.value,
           'process_id': PROCESS_ID.value}
  missing = [f'--{k}' for k, v in given.items() if v is None]
  if missing and len(missing) < len(given):
    fail(f'--multihost needs all of --coordinator_address, --num_processes and --process_id or '
         f'none of them (auto-detection from the environment); missing {", ".join(missing)}')
  if not missing and given['process_id'] >= given['num_processes']:
    fail(f'--process_id={given["process_id"]} must be below --num_processes='
         f'{given["num_processes"]}')
  jax.distributed.initialize(**({} if missing else given))


def run(main):
  """app.run(main) where bad flags and UsageErrors raised by `main` become `fail(...)`."""

  def guarded(argv):
    if len(argv) > 1:
      fail(f'unexpected arguments {argv[1:]}; everything is set with --flags')
    logging.set_verbosity(logging.INFO)
    logging.get_absl_handler().addFilter(_QuietLibraries())
    if MULTIHOST.value:
      initialize_distributed()
    elif any(f.value is not None for f in (COORDINATOR, NUM_PROCESSES, PROCESS_ID)):
      fail('--coordinator_address, --num_processes and --process_id only apply with --multihost')
    try:
      with preempt.handling_sigterm(enabled=not MULTIHOST.value):
        main(argv)
    except UsageError as e:
      fail(str(e))
    except preempt.Preempted as e:  # checkpoint saved: a scheduler re-runs the command
      print(f'preempted: {e}', file=sys.stderr)
      sys.exit(143)
    except preempt.NonFiniteError as e:
      fail(str(e), status=1)

  app.run(guarded, flags_parser=_parse)
