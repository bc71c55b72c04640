"""What the CLI prints: plain-text tables (columns padded to their widest cell, two spaces
apart) and the JSON of `--json` listings."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

from pydantic import BaseModel


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    )


def json_list(models: Iterable[BaseModel]) -> str:
    """What every `--json` listing prints: the models as a JSON array, indented."""
    return json.dumps([m.model_dump(mode="json") for m in models], indent=2)
