r"""The longest functions in the code base, by lines from `def` to the last line of the body.

  python -m tools.function_lengths [--top 10] [PATH ...]   (default: ae_jax experiments)
"""

import argparse
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def function_lengths(paths) -> list[tuple[int, str]]:
  """(lines, 'file:line name') for every function and method under `paths` (.py files)."""
  out = []
  for top in paths:
    files = [top] if top.endswith(".py") else [
        os.path.join(d, f) for d, _, fs in os.walk(top) for f in fs if f.endswith(".py")]
    for path in sorted(files):
      with open(path) as f:
        tree = ast.parse(f.read(), path)
      for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
          out.append((node.end_lineno - node.lineno + 1,
                      f"{os.path.relpath(path, ROOT)}:{node.lineno} {node.name}"))
  return sorted(out, reverse=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("paths", nargs="*", default=["ae_jax", "experiments"])
  parser.add_argument("--top", type=int, default=10)
  args = parser.parse_args()
  for n, where in function_lengths([os.path.join(ROOT, p) for p in args.paths])[:args.top]:
    print(f"{n:5d}  {where}")


if __name__ == "__main__":
  main()
