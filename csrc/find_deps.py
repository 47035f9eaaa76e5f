"""Prints, ;-separated, what CMakeLists.txt needs from the build environment: oneDNN's
include dir and library, the XLA FFI include dir (jaxlib's) and nanobind's CMake dir.

Found through the installed distributions' file lists, so nothing is imported but
nanobind (jaxlib's import would pull in numpy and more); exits 1 with a reason.
"""

import importlib.metadata as md
import importlib.util
import os
import sys


def _file(dist: str, suffix: str) -> str:
  try:
    files = md.files(dist) or []
  except md.PackageNotFoundError:
    sys.exit(f"the build requirement {dist!r} is not installed (no wheel for this platform?)")
  for f in files:
    if str(f).replace(os.sep, "/").endswith(suffix):
      return str(f.locate().resolve())
  sys.exit(f"{dist!r} has no file ending in {suffix!r}")


def main() -> None:
  header = _file("onednn-devel-cpu-gomp", "include/oneapi/dnnl/dnnl.hpp")
  library = _file("onednn-cpu-gomp", "/libdnnl.so.3")
  jaxlib = importlib.util.find_spec("jaxlib")
  if jaxlib is None or jaxlib.origin is None:
    sys.exit("the build requirement 'jaxlib' is not installed")
  ffi_include = os.path.join(os.path.dirname(jaxlib.origin), "include")
  if not os.path.exists(os.path.join(ffi_include, "xla", "ffi", "api", "ffi.h")):
    sys.exit(f"jaxlib has no XLA FFI headers in {ffi_include}")
  try:
    import nanobind
  except ImportError:
    sys.exit("the build requirement 'nanobind' is not installed")
  print(";".join([os.path.dirname(os.path.dirname(os.path.dirname(header))), library, ffi_include,
                  nanobind.cmake_dir()]), end="")


if __name__ == "__main__":
  main()
