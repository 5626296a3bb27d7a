"""The dashboards as files: generate the JSON, write it, compare it with what is committed."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dashboards import consistency, migration, performance, user_impact

#: where the committed JSON lives, beside these sources
GENERATED = Path(__file__).resolve().parent / "generated"

BUILDERS: dict[str, Callable[[], dict[str, Any]]] = {
    "migration-progress.json": migration.build,
    "uuid-consistency.json": consistency.build,
    "user-impact.json": user_impact.build,
    "performance-impact.json": performance.build,
}


def generate() -> dict[str, str]:
    """File name → JSON text (sorted keys, indent 2, final newline): deterministic."""
    return {
        name: json.dumps(build(), sort_keys=True, indent=2, ensure_ascii=False) + "\n"
        for name, build in BUILDERS.items()
    }


def write(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in generate().items():
        path = out / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def differences(out: Path) -> list[str]:
    """The files under `out` that differ from what the sources generate (missing ones too),
    and JSON files there that no source generates."""
    expected = generate()
    stale = [
        name
        for name, text in expected.items()
        if not (out / name).is_file() or (out / name).read_text(encoding="utf-8") != text
    ]
    extra = (
        sorted(p.name for p in out.glob("*.json") if p.name not in expected) if out.is_dir() else []
    )
    return stale + extra
