"""One row per injected fault, and the table `make faults` prints."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, List, Optional


@dataclass
class FaultResult:
    fault: str  # what was done, e.g. "engine replica actor killed during 8 streams"
    sent: int  # requests sent in the fault's window
    failed: int  # of those, the ones a client saw fail (any error, cut or hang)
    clients_saw: Counter = field(default_factory=Counter)  # outcome -> count, e.g. "200", "503+Retry-After"
    recovery_s: Optional[float] = None  # fault injected -> first request served normally again
    bound: str = ""  # the bound the case is held to, in words
    violations: List[str] = field(default_factory=list)  # bounds broken; empty when the case passed

    @property
    def ok(self) -> bool:
        return not self.violations

    def check(self, condition: bool, violation: str) -> None:
        """Record a broken bound (the e2e tests assert `result.ok`, the table shows why not)."""
        if not condition:
            self.violations.append(violation)

    def saw(self) -> str:
        return ", ".join(f"{outcome} x{count}" for outcome, count in self.clients_saw.most_common()) or "-"


def table(results: Iterable[FaultResult]) -> str:
    header = ("fault", "sent", "failed", "what clients saw", "recovery", "bound", "ok")
    rows = [header] + [
        (r.fault, str(r.sent), str(r.failed), r.saw(),
         "-" if r.recovery_s is None else f"{r.recovery_s:.1f} s", r.bound,
         "yes" if r.ok else "NO: " + "; ".join(r.violations))
        for r in results
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (width + 2) for width in widths) + "|")
    return "\n".join(lines)
