"""Root conftest: loads the repository's pytest plugins for every collected path (tests/ and chapters/).

``tests.nbval_tolerance`` extends nbval with the per-cell ``approx`` tolerance (see its docstring and the header of
``tests/sanitize.cfg``). pytest puts this directory on sys.path for a root conftest (rootdir, "prepend" import
mode), so ``tests`` imports as a package from here.
"""

pytest_plugins = ["tests.nbval_tolerance"]
