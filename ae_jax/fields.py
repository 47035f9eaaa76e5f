"""A config field: its dotted name, default, check, rerun rule and help; declared once, where it is used.

Objectives, models and data sources declare their own fields in their records;
`ae_jax.config` gathers them into the run config, its checks, `--help` and the
generated table in docs/config.md.
"""

from collections.abc import Callable
import dataclasses
import difflib
import sys
from typing import Any

# What a rerun in the same workdir may do with a field:
FREE = "free"  # change it: bookkeeping, placement, or num_epochs (which extends a run)
ALLOW = "allow"  # change it with --allow_config_change: it alters what is learned
NEVER = "never"  # never: the saved params or optimizer state have another shape


@dataclasses.dataclass(frozen=True)
class Check:
  """A predicate and the phrase that says what it accepts (`expected <phrase>`).

  `expected` may be a function, for values known only at run time (the
  registered objective names, say).
  """

  ok: Callable[[Any], bool]
  phrase: str | Callable[[], str]

  @property
  def expected(self) -> str:
    return self.phrase() if callable(self.phrase) else self.phrase


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
  return isinstance(v, int | float) and not isinstance(v, bool) and v == v


POSITIVE = Check(lambda v: _is_int(v) and v > 0, "a positive integer")
NON_NEGATIVE = Check(lambda v: _is_int(v) and v >= 0, "an integer >= 0")
BOOL = Check(lambda v: isinstance(v, bool), "True or False")
NUMBER = Check(_is_number, "a number")
POSITIVE_NUMBER = Check(lambda v: _is_number(v) and v > 0, "a positive number")
NON_NEGATIVE_NUMBER = Check(lambda v: _is_number(v) and v >= 0, "a number >= 0")
FRACTION = Check(lambda v: _is_number(v) and 0 <= v <= 1, "a fraction in [0, 1]")
OPEN_FRACTION = Check(lambda v: _is_number(v) and 0 < v < 1, "a number in (0, 1)")
TEXT = Check(lambda v: isinstance(v, str) and v != "", "a non-empty string")
LEVELS = Check(lambda v: isinstance(v, tuple | list) and len(v) > 0 and all(POSITIVE.ok(f) for f in v),
               "a non-empty tuple of positive integers")
TEXTS = Check(lambda v: isinstance(v, tuple | list) and all(TEXT.ok(s) for s in v),
              "a tuple of non-empty strings")


def one_of(*allowed) -> Check:
  return Check(lambda v: v in allowed, f"one of {allowed}")


def one_of_keys(registry: dict, what: str) -> Check:
  """A name in `registry` (checked at validation time, so names registered later count)."""
  return Check(lambda v: v in registry, lambda: f"{what} of {tuple(registry)}")


def optional(check: Check) -> Check:
  return Check(lambda v: v is None or check.ok(v), lambda: f"None or {check.expected}")


@dataclasses.dataclass(frozen=True)
class Field:
  name: str  # dotted: 'model.latent_dim'
  default: Any
  check: Check
  rerun: str  # FREE, ALLOW or NEVER
  help: str
  field_type: type | None = None  # for a None default: what `--config.NAME=...` parses to


def closest(name: str, known) -> str | None:
  """The known name nearest to `name` (a typo's intended name), if any is near."""
  close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
  return close[0] if close else None


def suggest(name: str, known) -> str:
  """' (did you mean X?)' for the closest known name, or ''."""
  close = closest(name, known)
  return f" (did you mean {close}?)" if close else ""


def register(registry: dict, name: str, record, what: str, section: str | None = None):
  """registry[name] = record, noting the module that registered it (run.json records it).

  Registering a name again from the same module replaces it (a notebook cell run
  twice); a name another module registered is refused. section: the config
  section the record's fields must live in (it sees only that section).
  """
  if not TEXT.ok(name):
    raise ValueError(f"{what} name {name!r}: expected a non-empty string")
  outside = [f.name for f in record.fields if section and not f.name.startswith(f"{section}.")]
  if outside:
    raise ValueError(f"{what} {name!r}: field {outside[0]!r} must live under {section}. "
                     f"(the {what} sees config.{section} alone)")
  module = record.module or sys._getframe(2).f_globals.get("__name__", "")  # the caller of X.register
  old = registry.get(name)
  if old is not None and old.module != module:
    raise ValueError(f"{what} {name!r} is already registered by {old.module}; pick another name")
  registry[name] = dataclasses.replace(record, module=module)
  return registry[name]


def lookup(registry: dict, name: str, field: str):
  """registry[name], or a one-line ValueError naming the field, the value and the known names."""
  if name not in registry:
    raise ValueError(f"{field}={name!r}: expected one of {tuple(registry)}{suggest(str(name), registry)}")
  return registry[name]
