"""Deprecated: `python -m uniformer.commands` is `python -m uniformer.cli` (kept for one release)."""
from __future__ import annotations

import sys
import warnings

from uniformer.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    warnings.warn("`python -m uniformer.commands` is deprecated: use `python -m uniformer.cli`", FutureWarning,
                  stacklevel=1)
    sys.exit(main())
