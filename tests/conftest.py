"""Test-session setup: one JAX persistent compilation cache for the session.

Many tests train, prune or time the same tiny networks; with the cache, each distinct program is
compiled once per session and loaded from disk afterwards, in this process and in the launcher
subprocesses the tests start (they inherit the environment). The cache folder is new for every
session and removed at its end, so a run never profits from an earlier one. Set
JAX_COMPILATION_CACHE_DIR yourself to keep (or disable, with an empty value) the cache.
"""
import atexit
import os
import shutil
import tempfile

if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _DIR = tempfile.mkdtemp(prefix='jaxbud-tests-jax-cache-')
  atexit.register(shutil.rmtree, _DIR, ignore_errors=True)
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _DIR
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.2')

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

# In case jax was imported (and read its environment) before this file.
jax.config.update('jax_compilation_cache_dir', os.environ['JAX_COMPILATION_CACHE_DIR'] or None)
jax.config.update('jax_persistent_cache_min_compile_time_secs',
                  float(os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS']))
