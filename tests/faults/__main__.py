"""make faults: run the whole fault battery on the real app and print its table (exit 1 if a bound broke)."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from tests.faults import kills, traffic
from tests.faults.report import table


def main() -> int:
    results = []
    with tempfile.TemporaryDirectory(prefix="faults-") as work:
        for module in (kills, traffic):
            results += module.run_battery(Path(work) / module.__name__.rsplit(".", 1)[-1])
            print(table(results), flush=True)  # so far: a long run shows its progress
    print("\nfault battery:\n" + table(results))
    return 0 if all(result.ok for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
