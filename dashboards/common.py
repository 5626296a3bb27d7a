"""Panel builders shared by the dashboards, their layout, and the JSON Grafana loads. No I/O.

grafanalib (0.7) writes schemaVersion 12 and some Grafana 6 shapes (bar gauge field options,
threshold steps with the string "null", legacy row and style keys). `to_json` turns its output
into the shape of a current schema (SCHEMA_VERSION) so Grafana loads it without migrating, and
every panel and query reads the `datasource` variable: a provisioned dashboard must never name a
datasource uid of its own.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from typing import Any, TypeAlias

import attr
from grafanalib import core as g  # type: ignore[import-untyped]
from grafanalib._gen import DashboardEncoder  # type: ignore[import-untyped]

from dashboards import thresholds as th

SCHEMA_VERSION = 39
PANEL_TYPES = frozenset({"timeseries", "stat", "bargauge", "table", "state-timeline"})
DATASOURCE: dict[str, str] = {"type": "prometheus", "uid": "${datasource}"}
TAG = "uuidguard"
#: grafanalib objects carry no types; the builders below are where they are made
Panel: TypeAlias = Any
Step: TypeAlias = Any

GREEN, ORANGE, RED, BLUE, TEXT = "green", "orange", "red", "blue", "text"
_SEVERITY_COLOUR = {"warning": ORANGE, "critical": RED}
_WIDTH = 24


# -- thresholds --------------------------------------------------------------------------------


def steps(base: str, *pairs: tuple[str, float]) -> list[Step]:
    """Threshold steps: `base` below the first value, then each colour from its value up."""
    out = [g.Threshold(base, 0, 0.0)]
    out += [g.Threshold(colour, i, float(value)) for i, (colour, value) in enumerate(pairs, 1)]
    return out


def alert_steps(*alerts: th.AlertThreshold) -> list[Step]:
    """Steps that change colour where the alerts fire: `>` alerts turn the value orange
    (warning) or red (critical) above their value; a `<` alert keeps it red below its value."""
    below = [a for a in alerts if a.op == "<"]
    if below:
        (a,) = below
        return steps(_SEVERITY_COLOUR[a.severity], (GREEN, a.value))
    ordered = sorted(alerts, key=lambda a: a.value)
    # Grafana colours from a step's value up (>=); the alert fires above it (>): at zero the
    # difference is every healthy value, so the step starts just above it
    return steps(
        GREEN,
        *((_SEVERITY_COLOUR[a.severity], a.value or math.nextafter(0.0, 1.0)) for a in ordered),
    )


def runbook_links(*alerts: str) -> list[Any]:
    return [
        g.DataLink(title=f"Runbook: {a}", linkUrl=th.runbook(a), isNewTab=True)
        for a in dict.fromkeys(alerts)
    ]


# -- targets and panels ------------------------------------------------------------------------


def target(
    expr: str, legend: str = "", ref: str = "A", instant: bool = False, fmt: str = "time_series"
) -> Any:
    return g.Target(
        expr=expr,
        legendFormat=legend,
        refId=ref,
        instant=instant,
        format=fmt,
        datasource=DATASOURCE,
    )


def targets(
    queries: Sequence[tuple[str, str]], instant: bool = False, fmt: str = "time_series"
) -> list[Any]:
    """(expr, legend) pairs as targets A, B, C …"""
    return [
        target(expr, legend, chr(ord("A") + i), instant, fmt)
        for i, (expr, legend) in enumerate(queries)
    ]


def _common(title: str, description: str, alerts: Iterable[str]) -> dict[str, Any]:
    return {
        "title": title,
        "description": description,
        "dataSource": DATASOURCE,
        "links": runbook_links(*alerts),
    }


def stat(
    title: str,
    description: str,
    queries: Sequence[tuple[str, str]],
    unit: str,
    colours: list[Step] | None = None,
    alerts: Iterable[str] = (),
    mappings: Sequence[Any] = (),
    calcs: Sequence[str] = ("lastNotNull",),
    text_mode: str = "auto",
    graph: bool = True,
) -> Panel:
    extra: dict[str, Any] = {"options": {"reduceOptions": {"calcs": list(calcs)}}}
    return g.Stat(
        **_common(title, description, alerts),
        targets=targets(queries),
        format=unit,
        thresholds=colours or steps(BLUE),
        mappings=list(mappings),
        reduceCalc=calcs[0],
        textMode=text_mode,
        graphMode="area" if graph else "none",
        colorMode="value",
        noValue="no data",
        extraJson=extra,
    )


def timeseries(
    title: str,
    description: str,
    queries: Sequence[tuple[str, str]],
    unit: str,
    colours: list[Step] | None = None,
    alerts: Iterable[str] = (),
    stacked: bool = False,
    bars: bool = False,
    overrides: Sequence[dict[str, Any]] = (),
    soft_max: int | None = None,
) -> Panel:
    return g.TimeSeries(
        **_common(title, description, alerts),
        targets=targets(queries),
        unit=unit,
        thresholds=colours or steps(GREEN),
        thresholdsStyleMode="line" if colours else "off",
        stacking={"mode": "normal", "group": "A"} if stacked else {},
        fillOpacity=60 if bars else (20 if stacked else 10),
        drawStyle="bars" if bars else "line",
        lineInterpolation="stepAfter" if stacked else "linear",
        legendDisplayMode="table",
        legendPlacement="bottom",
        legendCalcs=["lastNotNull", "max"],
        tooltipMode="multi",
        overrides=list(overrides),
        valueMin=0,
        axisSoftMax=soft_max,
    )


def bargauge(
    title: str,
    description: str,
    queries: Sequence[tuple[str, str]],
    unit: str,
    colours: list[Step] | None = None,
    alerts: Iterable[str] = (),
    fmt: str = "time_series",
) -> Panel:
    return g.BarGauge(
        **_common(title, description, alerts),
        targets=targets(queries, instant=True, fmt=fmt),
        format=unit,
        calc="lastNotNull",
        displayMode="gradient",
        orientation="horizontal",
        min=0,
        max=None,
        thresholds=colours or steps(BLUE),
    )


def table(
    title: str,
    description: str,
    queries: Sequence[tuple[str, str]],
    unit: str,
    alerts: Iterable[str] = (),
    colours: list[Step] | None = None,
    organize: dict[str, Any] | None = None,
    overrides: Sequence[dict[str, Any]] = (),
) -> Panel:
    transformations: list[dict[str, Any]] = [{"id": "merge", "options": {}}]
    if organize:
        transformations.append({"id": "organize", "options": organize})
    return g.Table(
        **_common(title, description, alerts),
        targets=targets(queries, instant=True, fmt="table"),
        unit=unit,
        thresholds=colours or steps(GREEN),
        displayMode="color-text",
        transformations=transformations,
        overrides=list(overrides),
    )


def timeline(
    title: str,
    description: str,
    queries: Sequence[tuple[str, str]],
    unit: str,
    mappings: Sequence[Any],
    alerts: Iterable[str] = (),
) -> Panel:
    return g.StateTimeline(
        **_common(title, description, alerts),
        targets=targets(queries),
        mappings=list(mappings),
        colorMode="fixed",
        extraJson={"fieldConfig": {"defaults": {"unit": unit}}},
    )


def unit_of(name: str, unit: str) -> dict[str, Any]:
    """An override giving the field `name` its own unit."""
    return {
        "matcher": {"id": "byName", "options": name},
        "properties": [{"id": "unit", "value": unit}],
    }


def right_axis(name: str, unit: str) -> dict[str, Any]:
    """An override putting the series `name` on a right axis in `unit`."""
    return {
        "matcher": {"id": "byName", "options": name},
        "properties": [
            {"id": "unit", "value": unit},
            {"id": "custom.axisPlacement", "value": "right"},
        ],
    }


def value_map(*items: tuple[str, str, str]) -> Any:
    """A value mapping: (value, text, colour) triples."""
    return g.StatValueMappings(
        *(g.StatValueMappingItem(text, value, colour) for value, text, colour in items)
    )


# -- layout --------------------------------------------------------------------------------------


class Grid:
    """Places panels left to right on Grafana's 24-column grid, wrapping to a new line."""

    def __init__(self) -> None:
        self.panels: list[Panel] = []
        self._x = self._y = self._line = 0

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append(
            g.RowPanel(title=title, gridPos=g.GridPos(h=1, w=_WIDTH, x=0, y=self._y))
        )
        self._y += 1

    def add(self, w: int, h: int, *panels: Panel) -> None:
        for panel in panels:
            if self._x + w > _WIDTH:
                self._newline()
            self.panels.append(
                attr.evolve(panel, gridPos=g.GridPos(h=h, w=w, x=self._x, y=self._y))
            )
            self._x += w
            self._line = max(self._line, h)

    def _newline(self) -> None:
        self._y += self._line
        self._x = self._line = 0


# -- the dashboard ---------------------------------------------------------------------------------


def state_annotation() -> dict[str, Any]:
    """The run's state changes as annotations: a state the run entered within the last minute."""
    return {
        "name": "Migration run state changes",
        "datasource": DATASOURCE,
        "enable": True,
        "iconColor": "purple",
        "expr": (
            "max by (state) (changes(uuidguard_migration_state[1m])) > 0"
            " and on (state) max by (state) (uuidguard_migration_state) == 1"
        ),
        "step": "1m",
        "titleFormat": "run state: {{state}}",
        "textFormat": "the latest migration run entered state {{state}}",
        "tagKeys": "state",
        "useValueForTime": False,
    }


def dashboard(
    uid: str,
    title: str,
    description: str,
    grid: Grid,
    annotations: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """The finished dashboard as Grafana's JSON (see `to_json`)."""
    built = g.Dashboard(
        title=title,
        uid=uid,
        description=description,
        tags=[TAG],
        timezone="browser",
        refresh="30s",
        time=g.Time("now-3h", "now"),
        graphTooltip=g.GRAPH_TOOLTIP_MODE_SHARED_CROSSHAIR,
        editable=False,
        panels=grid.panels,
        templating=g.Templating(
            list=[
                g.Template(
                    name="datasource",
                    label="Data source",
                    query="prometheus",
                    type="datasource",
                    default="Prometheus",
                    hide=0,
                )
            ]
        ),
        annotations=g.Annotations(list=[_builtin_annotation(), *annotations]),
        links=[
            g.DashboardLink(
                title="uuidguard dashboards",
                type="dashboards",
                tags=[TAG],
                asDropdown=True,
                keepTime=True,
                includeVars=True,
            ),
            g.DashboardLink(
                title="Runbooks",
                type="link",
                uri=th.RUNBOOKS + "README.md",
                icon="doc",
                targetBlank=True,
                keepTime=False,
            ),
        ],
    ).auto_panel_ids()
    return to_json(json.loads(json.dumps(built.to_json_data(), cls=DashboardEncoder)))


def _builtin_annotation() -> dict[str, Any]:
    return {
        "builtIn": 1,
        "datasource": {"type": "grafana", "uid": "-- Grafana --"},
        "enable": True,
        "hide": True,
        "iconColor": "rgba(0, 211, 255, 1)",
        "name": "Annotations & Alerts",
        "type": "dashboard",
    }


_LEGACY_DASHBOARD = ("rows", "style", "sharedCrosshair", "hideControls", "gnetId", "id", "__inputs")
_LEGACY_PANEL = (
    "span",
    "height",
    "minSpan",
    "error",
    "cacheTimeout",
    "repeatDirection",
    "maxPerRow",
    "color",
    "columns",
    "fontSize",
    "mappings",
    "repeat",
    "interval",
    "timeFrom",
    "timeShift",
)
_LEGACY_TARGET = ("target", "metric", "query", "step", "intervalFactor", "interval")
_LEGACY_TEMPLATE = (
    "useTags",
    "tagsQuery",
    "tagValuesQuery",
    "auto",
    "auto_min",
    "auto_count",
    "allValue",
    "regex",
    "datasource",
)


def to_json(d: dict[str, Any]) -> dict[str, Any]:
    """grafanalib's output in the shape of schema SCHEMA_VERSION."""
    d["schemaVersion"] = SCHEMA_VERSION
    for key in _LEGACY_DASHBOARD:
        d.pop(key, None)
    for tpl in d["templating"]["list"]:
        for key in _LEGACY_TEMPLATE:
            tpl.pop(key, None)
        tpl["current"] = {"text": tpl["current"]["text"], "value": tpl["current"]["value"]}
    for panel in d["panels"]:
        _panel(panel)
    return d


def _panel(p: dict[str, Any]) -> None:
    if p["type"] == "bargauge":
        _bargauge(p)
    mappings = p.get("mappings")
    for key in _LEGACY_PANEL:
        if key == "mappings" and p["type"] != "table":
            continue
        if key in ("interval", "timeFrom", "timeShift", "repeat") and p.get(key):
            continue
        p.pop(key, None)
    if p["type"] == "table" and mappings:
        p["fieldConfig"]["defaults"]["mappings"] = mappings
    if p["type"] == "row":
        p.pop("datasource", None)
        p.pop("targets", None)
        p.pop("fieldConfig", None)
        p.pop("links", None)
        p.pop("transformations", None)
        p.pop("maxDataPoints", None)
        return
    defaults = p["fieldConfig"]["defaults"]
    t = defaults.get("thresholds")
    if t is not None:
        t["steps"] = [
            {"color": s["color"], "value": None if s["index"] == 0 else s["value"]}
            for s in t["steps"]
        ]
    for k in [k for k, v in defaults.items() if v is None]:
        del defaults[k]
    custom = defaults.get("custom", {})
    for k in [k for k, v in custom.items() if v is None]:
        del custom[k]
    for tgt in p["targets"]:
        for key in _LEGACY_TARGET:
            tgt.pop(key, None)
        tgt["range"] = not tgt["instant"]
        tgt["editorMode"] = "code"


def _bargauge(p: dict[str, Any]) -> None:
    """Grafana 6's `options.fieldOptions` → `fieldConfig.defaults` and `options.reduceOptions`."""
    opts = p["options"]
    fo = opts.pop("fieldOptions")
    defaults = p["fieldConfig"]["defaults"]
    for key in ("decimals", "max", "min", "unit", "links"):
        if fo["defaults"].get(key) is not None:
            defaults[key] = fo["defaults"][key]
    defaults["mappings"] = fo["mappings"]
    p["fieldConfig"].setdefault("overrides", [])
    opts["reduceOptions"] = {"calcs": fo["calcs"], "fields": "", "values": fo["values"]}
    opts["showUnfilled"] = True
    opts["valueMode"] = "color"
    opts["namePlacement"] = "auto"
    opts["sizing"] = "auto"
    opts.pop("showThresholdLabels", None)
    opts.pop("showThresholdMarkers", None)
