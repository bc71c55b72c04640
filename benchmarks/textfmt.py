"""Number and table formatting shared by the report's sections (markdown)."""

from __future__ import annotations

from collections.abc import Sequence


def num(value: float | None, digits: int = 2) -> str:
    """`value` with `digits` decimals (small values in 2 significant digits); "—" for None."""
    if value is None:
        return "—"
    if value != 0 and abs(value) < 10 ** (-digits):
        return f"{value:.2g}"
    return f"{value:.{digits}f}"


def ratio(value: float | None) -> str:
    """A ratio with a multiplication sign, two decimals (three below 0.1); "—" for None."""
    if value is None:
        return "—"
    return f"{value:.3f}\u00d7" if value < 0.1 else f"{value:.2f}\u00d7"


def figures(values: Sequence[float], sep: str = ", ") -> str:
    """Ratios or similar figures, two decimals each, joined by `sep`."""
    return sep.join(f"{v:.2f}" for v in values)


def table(header: list[str], rows: list[list[str]], align: str = "") -> list[str]:
    """A markdown table; `align` has one "l" or "r" per column (default: first left)."""
    aligns = align or "l" + "r" * (len(header) - 1)
    sep = ["---:" if a == "r" else "---" for a in aligns]
    return [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join(sep) + " |",
        *("| " + " | ".join(r) + " |" for r in rows),
    ]
