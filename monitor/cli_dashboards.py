"""`uuidguard dashboards build|check`: the Grafana JSON generated from dashboards/*.py."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dashboards import build as build_mod
from migrator.errors import UsageError
from monitor.cli_common import DebugOpt, err, out

dashboards_app = typer.Typer(
    help="The Grafana dashboards: generate their JSON from the grafanalib sources.",
    no_args_is_help=True,
)

OutOpt = Annotated[
    Path,
    typer.Option(
        "--out",
        help="Directory of the dashboard JSON (default: dashboards/generated beside the sources).",
    ),
]


@dashboards_app.command("build")
def build(out_dir: OutOpt = build_mod.GENERATED, debug: DebugOpt = False) -> None:
    """Write every dashboard's JSON (sorted keys, deterministic) into the directory."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"{out_dir} is a file", "pass --out a directory")
    for path in build_mod.write(out_dir):
        out.print(f"wrote {path}", markup=False)


@dashboards_app.command("check")
def check(out_dir: OutOpt = build_mod.GENERATED, debug: DebugOpt = False) -> None:
    """Exit 1 when the JSON in the directory differs from what the sources generate."""
    stale = build_mod.differences(out_dir)
    if stale:
        err.print(
            f"out of date in {out_dir}: {', '.join(stale)}. Run `uuidguard dashboards build`"
            " and commit the result",
            markup=False,
        )
        raise typer.Exit(1)
    out.print(f"{len(build_mod.BUILDERS)} dashboards in {out_dir} match their sources")
