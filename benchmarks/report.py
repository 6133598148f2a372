"""Where every benchmark writes: ``<out>/<name>.json`` (all figures) and ``<out>/<name>.md`` (the table)."""

from __future__ import annotations

import json
from pathlib import Path


def write(out: Path, name: str, result: dict, lines: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2))
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
