"""How the diagnostics speak: ``check``'s pass/fail lines, and a device's name."""

from __future__ import annotations

from typing import Any

OK, FAIL, SKIP = " ok ", "FAIL", "skip"


def line(mark: str, what: str, detail: str) -> None:
    """``[mark] what: detail``; a detail's further lines indented beneath it."""
    first, *rest = detail.splitlines() or [""]
    print(f"[{mark}] {what}: {first}", flush=True)
    for extra in rest:
        print(f"       {extra}", flush=True)


def device_name(part: Any) -> str:
    """A device as the admin knows it: its ``what``, else its class's name."""
    return str(getattr(part, "what", None) or type(part).__name__)
