"""What the entry points share: one-line flag errors, the exit codes, process setup (CPU, logs, hosts)."""

import logging as py_logging
import os
import sys

from absl import app, flags, logging

from ae_jax import checkpoint, data, faults, parallel, preemption
from ae_jax import config as config_lib
import experiments

# Exceptions -> exit codes, most specific first; the message is printed as one line.
EXIT_CODES = (
    (preemption.Preempted, lambda e: 128 + e.signum),  # after checkpointing the agreed step
    (FloatingPointError, lambda e: 3),  # training diverged or collapsed
    (checkpoint.CheckpointError, lambda e: 4),  # no readable checkpoint
    (faults.EnvironmentFault, lambda e: 6),  # the machine: no space, a read-only or vanished filesystem, I/O
    (ValueError, lambda e: 2),  # bad input (data.DataError too), found before any work
)


def fail(message: str, code: int = 2):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(code)


def _unknown_override(argv) -> str | None:
  """The first --config.KEY=... whose KEY no config field declares (config files only set declared ones)."""
  known = config_lib.by_name()
  for arg in argv:
    if arg.startswith("--config."):
      key = arg[len("--config."):].split("=", 1)[0]
      if key not in known:
        return key
  return None


def _config_path(argv) -> str | None:
  """The value of --config FILE / --config=FILE in argv, if given."""
  for i, arg in enumerate(argv):
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1]
    if arg.startswith("--config="):
      return arg.split("=", 1)[1]
  return None


def _load_config_file(path: str) -> None:
  """Runs a config file's get_config() so that the plugins it imports have registered their fields."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  try:
    spec = importlib.util.spec_from_file_location("_ae_jax_help_config", path.split(":", 1)[0])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.get_config()
  except Exception as e:  # pylint: disable=broad-except
    print(f"(--config {path}: not loaded, {type(e).__name__}: {e}; its plugins' fields are not listed)")


HELP = ("--help", "-h", "-?", "--helpshort", "--helpfull")


def usage(argv, full: bool) -> str:
  """The entry point's docstring, its own flags first, then the process flags (all of absl's too
  when `full`) and, if it takes --config, every config field (with those of the plugins the
  --config file imports) with its default and allowed values."""
  main = sys.modules["__main__"]
  text = [(main.__doc__ or "").strip(), ""]
  # absl files the flags a script defines under sys.argv[0] (its module is __main__).
  for name in (sys.argv[0], __name__):
    help_text = flags.FLAGS.module_help(name)
    if help_text.strip():
      text.append(help_text)
  if full:
    text += ["", "All flags, the libraries' too:", flags.FLAGS.get_help()]
  if "config" in flags.FLAGS:
    path = _config_path(argv)
    if path:
      _load_config_file(path)
    text += ["", "Config fields (--config.FIELD=VALUE; 'rerun' says whether a rerun in the same workdir "
             "may change it):"]
    for f in config_lib.all_fields():
      text.append(f"  --config.{f.name}: {f.help}\n    default {f.default!r}; expected "
                  f"{f.check.expected}; rerun: {f.rerun}")
  return "\n".join(text) + "\n"


def _plugins_in(argv) -> list[str]:
  """The modules or files named by --plugins=A,B (or --plugins A,B) in argv."""
  out = []
  for i, arg in enumerate(argv):
    if arg.startswith("--plugins="):
      out += arg.split("=", 1)[1].split(",")
    elif arg == "--plugins" and i + 1 < len(argv):
      out += argv[i + 1].split(",")
  return [p for p in out if p]


def define_plugins_flag() -> None:
  flags.DEFINE_list("plugins", [], "Modules or .py files that register your objectives, models or data "
                    "sources (docs/extending.md); imported before the config is read, and added to "
                    "config.plugins.")


def with_plugins(config):
  """config with --plugins added to config.plugins (which run.json and the checkpoints record)."""
  given = tuple(os.path.abspath(p) if p.endswith(".py") else p
                for p in (flags.FLAGS.plugins if "plugins" in flags.FLAGS else ()))
  if given:
    config.plugins = tuple(dict.fromkeys((*config.plugins, *given)))
  return config


def parse_flags(argv):
  """absl flag parsing, with every error as one line and exit code 2; --help lists the config fields.

  --plugins are imported first, so that the config file and the overrides see their fields.
  """
  try:
    config_lib.import_plugins(_plugins_in(argv))
  except ValueError as e:
    fail(f"--plugins: {e}")
  asked = [a for a in argv[1:] if a in HELP]
  if asked:
    print(usage(argv, full=asked[0] == "--helpfull"))
    sys.exit(0)
  try:
    rest = flags.FLAGS(argv)
    config = getattr(flags.FLAGS, "config", None)
    if config is not None:
      config.keys()  # config_flags defers a load failure to the first attribute read
    return rest
  except OSError as e:
    errno = [ln.strip() for ln in str(e).splitlines() if "Errno" in ln]
    fail("--config: cannot load the config file" + (f" ({errno[0]})" if errno else ""))
  except flags.UnrecognizedFlagError as e:
    name, known = e.flagname, config_lib.by_name()
    if name.startswith("config.") and name[len("config."):] in known:  # an override before any --config
      fail(f"--{name}: overrides a config field, so it needs a config file first: add "
           "--config experiments/configs/NAME.py (ae_mnist.py holds the defaults)")
    field = name if name in known else config_lib.closest(name, known)
    if field:  # --num_epochs=2 is --config.num_epochs=2
      fail(f"--{name}: unknown flag (did you mean --config.{field}?)")
    close = config_lib.closest(name, [f for f in flags.FLAGS if not f.startswith("config.")])
    fail(f"--{name}: unknown flag" + (f" (did you mean --{close}?)" if close else "") + "; see --help")
  except flags.Error as e:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    fail(" ".join(lines[:1] + [ln for ln in lines[1:] if "Errno" in ln])[:500])
  except (AttributeError, KeyError) as e:  # config_flags: an override of a key that does not exist
    key = _unknown_override(argv)
    if key is None:
      fail(f"bad --config override: {e}")
    fail(f"--config.{key}: unknown config key{config_lib.suggest(key, config_lib.by_name())}")


def run(main) -> None:
  """app.run(main) with one-line flag errors, and each library error as one line and its exit code."""
  def guarded(argv):
    try:
      main(argv)
    except tuple(kind for kind, _ in EXIT_CODES) as e:
      code = next(code(e) for kind, code in EXIT_CODES if isinstance(e, kind))
      fail(str(e), code)
  app.run(guarded, flags_parser=parse_flags)


class _QuietLibraries(py_logging.Filter):
  """Keeps the progress lines readable: INFO from library internals is dropped (ae_jax's stays), and so
  are Orbax's logged tracebacks, whose exception reaches ae_jax's code, which says it in one line."""

  LIBRARIES = ("orbax", "tensorstore", "etils", "jax", "tensorflow_datasets")

  def filter(self, record):
    library = any(f"/{lib}/" in record.pathname for lib in self.LIBRARIES)
    if library and record.exc_info and "/orbax/" in record.pathname:
      return False
    return record.levelno >= py_logging.WARNING or not library


def quiet_logging() -> None:
  """INFO lines from ae_jax and the entry point; libraries only from WARNING up."""
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_QuietLibraries())


exit_on_signal = experiments.exit_on_signal


def use_compilation_cache(directory: str | None = None) -> str | None:
  """JAX's persistent compilation cache in `directory` (default $AE_JAX_CACHE/jax; '' turns it off).

  A rerun, a resume or a probe of the same model loads its compiled steps instead
  of compiling them again: a 1-epoch quickstart on 512 digits took 9.6 s, then
  3.4 s, with the same numbers. Compiled code is keyed by JAX on the program,
  the backend, the flags and the versions, so a stale entry is never used.
  """
  import jax  # pylint: disable=g-import-not-at-top

  directory = os.path.join(data.cache_dir(), "jax") if directory is None else directory
  if not directory:
    return None
  jax.config.update("jax_compilation_cache_dir", os.path.expanduser(directory))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)  # the steps take 0.5-2 s
  return directory


def start_tool(argv, workdir: str | None) -> str:
  """For the tools that read a trained workdir: signals, logging, the compilation cache, the workdir."""
  exit_on_signal()
  faults.drop_callbacks_to_closed_loops()
  quiet_logging()
  use_compilation_cache()
  if len(argv) > 1:
    fail(f"unexpected arguments: {' '.join(argv[1:])}")
  if not workdir:
    fail("--workdir is required")
  return workdir


def _env_int(name: str) -> int | None:
  return int(os.environ[name]) if name in os.environ else None


def define_process_flags() -> None:
  """--keep_freed_memory and the jax.distributed flags (with their JAX_* environment defaults)."""
  flags.DEFINE_bool("distributed", False,
                    "Join a multi-process run (jax.distributed); implied by --num_processes > 1.")
  flags.DEFINE_string("coordinator_address", os.environ.get("JAX_COORDINATOR_ADDRESS"),
                      "host:port of process 0's coordinator (default $JAX_COORDINATOR_ADDRESS).")
  flags.DEFINE_integer("num_processes", _env_int("JAX_NUM_PROCESSES"),
                       "Processes in the run (default $JAX_NUM_PROCESSES).", lower_bound=1)
  flags.DEFINE_integer("process_id", _env_int("JAX_PROCESS_ID"),
                       "This process's index, 0 .. num_processes - 1 (default $JAX_PROCESS_ID).",
                       lower_bound=0)
  flags.DEFINE_integer("distributed_timeout_s", 300, "Seconds to wait for every process to join.",
                       lower_bound=1)
  flags.DEFINE_integer("peer_timeout_s", 100,
                       "A process whose peer stops answering this long exits with an error.",
                       lower_bound=1)
  flags.DEFINE_string("compilation_cache_dir", None,
                      "JAX's persistent compilation cache (default $AE_JAX_CACHE/jax, i.e. "
                      "~/.cache/ae_jax/jax); '' turns it off.")
  flags.DEFINE_bool("keep_freed_memory", True,
                    "Keep freed memory in the process (experiments.keep_freed_memory: faster CPU "
                    "steps, more resident memory); --nokeep_freed_memory leaves malloc as it is.")


def start_process() -> None:
  """Before JAX's first op: CPU settings, INFO logging without library chatter, jax.distributed."""
  f = flags.FLAGS
  experiments.use_fast_cpu_settings(f.keep_freed_memory)
  experiments.size_cpu_pool()
  faults.drop_callbacks_to_closed_loops()
  faults.quiet_background_faults()
  quiet_logging()
  use_compilation_cache(f.compilation_cache_dir)
  n, pid = f.num_processes, f.process_id
  if n is not None and pid is not None and pid >= n:
    fail(f"--process_id={pid}: expected 0 .. {n - 1} for --num_processes={n}")
  if f.distributed or (n or 1) > 1:
    if n is not None and n > 1 and (pid is None or not f.coordinator_address):
      fail(f"--num_processes={n}: also give --process_id and --coordinator_address (or "
           "JAX_PROCESS_ID and JAX_COORDINATOR_ADDRESS)")
    parallel.initialize_distributed(f.coordinator_address, n, pid, timeout_s=f.distributed_timeout_s,
                                    peer_timeout_s=f.peer_timeout_s)
  exit_on_signal()  # again: jax.distributed's preemption notifier takes SIGTERM for itself
