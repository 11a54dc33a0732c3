"""Test-wide settings: static widgets (no random widget ids in re-executed notebooks), quiet progress bars."""

import os

# Notebooks re-executed by nbval inherit this: explorers draw their static strip only, so outputs are stable.
os.environ.setdefault("DIFFEDU_STATIC", "1")
