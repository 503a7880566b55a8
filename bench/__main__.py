"""``make bench``: run every benchmark that exists, print their tables and ratios."""

from __future__ import annotations

import importlib
import sys

BENCHES = ("bench.protocol", "bench.disk", "bench.cluster", "bench.kernel")


def main() -> int:
    status = 0
    for name in BENCHES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            print(f"== {name}: not available ({exc})")
            continue
        print(f"== {name}")
        status |= int(module.main([]) or 0)
    return status


if __name__ == "__main__":
    sys.exit(main())
