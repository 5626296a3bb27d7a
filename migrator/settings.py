"""Settings: one pydantic-settings model loaded from uuidguard.toml with UUIDGUARD_* overrides."""

from __future__ import annotations

import json
import os
import re
import string
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from apscheduler.triggers.cron import CronTrigger
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from migrator.errors import ConfigError

DEFAULT_CONFIG_FILE = "uuidguard.toml"
CONFIG_ENV = "UUIDGUARD_CONFIG"


def _identifier(value: object) -> object:
    if isinstance(value, str):
        if not value or "\x00" in value:
            raise ValueError("must be a non-empty name without NUL characters")
        if len(value.encode()) > 63:
            raise ValueError("PostgreSQL names are at most 63 bytes long")
    return value


#: A table, column or schema name; always quoted by the SQL compiler, never pasted into SQL.
Identifier = Annotated[str, BeforeValidator(_identifier)]
#: A column the platform may not have: "" (TOML has no null) or absent in the table means none.
OptionalColumn = Annotated[Identifier | None, BeforeValidator(lambda v: None if v == "" else v)]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _duration(value: object) -> object:
    if isinstance(value, int | float):
        return timedelta(seconds=value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise ValueError("expected a duration such as 90s, 15m, 24h or 30d")
        return timedelta(seconds=float(match[1]) * _UNITS[match[2] or "s"])
    return value


def format_duration(value: timedelta) -> str:
    """The shortest exact form in our own notation (90s, 15m, 24h, 30d), for display."""
    seconds = value.total_seconds()
    for unit in ("w", "d", "h", "m", "s"):
        size = _UNITS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


#: A duration written as 90s, 15m, 24h, 30d or a number of seconds.
Duration = Annotated[
    timedelta,
    BeforeValidator(_duration),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
]


def _blank_is_unset(value: Any) -> Any:
    """An empty secret (`UUIDGUARD_SERVE__API_TOKEN=` in a compose file) is no secret: unset,
    so what it protects stays closed instead of accepting an empty credential."""
    raw = value.get_secret_value() if isinstance(value, SecretStr) else value
    return None if isinstance(raw, str) and not raw.strip() else value


#: A token or secret; empty means unset.
Secret = Annotated[SecretStr | None, BeforeValidator(_blank_is_unset)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DocumentsMapping(_Section):
    """The documents table: one row per uploaded file."""

    table: Identifier = "documents"
    id: Identifier = "id"
    user_id: Identifier = "user_id"
    file_sha256: Identifier = "file_sha256"
    created_at: Identifier = "created_at"
    status: Identifier = "status"
    size_bytes: OptionalColumn = "size_bytes"
    filename: OptionalColumn = "filename"
    access_count: OptionalColumn = "access_count"
    last_accessed_at: OptionalColumn = "last_accessed_at"
    processed_statuses: tuple[str, ...] = ("processed",)


class ChunksMapping(_Section):
    """The chunk table the processing stage writes; its document column is a reference."""

    table: Identifier = "document_chunks"
    id: Identifier = "id"
    document_id: Identifier = "document_id"
    user_id: OptionalColumn = "user_id"
    content: OptionalColumn = "content"


class EmbeddingsMapping(_Section):
    """The embeddings table; its document column is a reference too."""

    table: Identifier = "embeddings"
    id: Identifier = "id"
    chunk_id: OptionalColumn = "chunk_id"
    document_id: Identifier = "document_id"
    vector: OptionalColumn = "embedding"


class ReferenceMapping(_Section):
    """Any further column that holds a document id (shares, feedback, citations...)."""

    table: Identifier
    column: Identifier
    primary_key: tuple[Identifier, ...]
    #: for shares: the column naming the user the document is shared with
    grantee_column: Identifier | None = None

    @field_validator("primary_key", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return (value,) if isinstance(value, str) else value


def _default_references() -> tuple[ReferenceMapping, ...]:
    return (
        ReferenceMapping(
            table="document_shares",
            column="document_id",
            primary_key=("document_id", "shared_with"),
            grantee_column="shared_with",
        ),
    )


class SchemaMapping(_Section):
    """Where the RAG platform keeps its data: every name is configurable."""

    schema_: Identifier = Field("public", alias="schema")
    documents: DocumentsMapping = DocumentsMapping()
    chunks: ChunksMapping = ChunksMapping()
    embeddings: EmbeddingsMapping | None = EmbeddingsMapping()
    references: tuple[ReferenceMapping, ...] = Field(default_factory=_default_references)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


_TEMPLATE_FIELDS = {"user_id", "file_sha256"}


class IdRuleSettings(_Section):
    """The application's deterministic id: uuid5(namespace, template.format(...))."""

    namespace: uuid.UUID = uuid.NAMESPACE_URL
    template: str = "{user_id}:{file_sha256}"
    #: compute rule ids inside PostgreSQL where uuid-ossp is already installed (never installed by us)
    sql_fast_path: bool = True

    @field_validator("template")
    @classmethod
    def _known_fields(cls, value: str) -> str:
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(value) if f is not None}
        except ValueError as exc:
            raise ValueError(f"not a format string ({exc})") from exc
        unknown = fields - _TEMPLATE_FIELDS
        if unknown:
            raise ValueError(
                f"unknown field {{{sorted(unknown)[0]}}}; only {{user_id}} and {{file_sha256}} exist"
            )
        if not fields:
            raise ValueError("must use {user_id} and/or {file_sha256}")
        return value


class DatabaseSettings(_Section):
    """Which PostgreSQL to work on; no DSN means the embedded server under state_dir."""

    dsn: SecretStr | None = None
    state_dir: Path = Path(".uuidguard")
    connect_timeout: Duration = timedelta(seconds=5)
    statement_timeout: Duration = timedelta(minutes=10)
    application_name: str = "uuidguard"

    @field_validator("dsn")
    @classmethod
    def _postgres_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        raw = value.get_secret_value().strip()
        if not re.match(r"^postgres(ql)?(\+psycopg)?://", raw):
            raise ValueError("expected a URL such as postgresql://user@host:5432/dbname")
        return SecretStr(raw)


class AssessSettings(_Section):
    """Thresholds of the damage assessment."""

    grace_period: Duration = timedelta(hours=24)
    priority_window: Duration = timedelta(days=30)
    #: documents whose access_count is at or above this quantile are "frequently accessed"
    frequent_quantile: float = Field(0.9, gt=0, lt=1)
    samples_per_class: int = Field(5, ge=0, le=100)
    #: work_mem for the assessment's own transaction: its sorts and hashes span every document
    work_mem: str = Field("64MB", pattern=r"^\d+\s*(kB|MB|GB)$")
    top_users: int = Field(20, ge=0, le=1000)


class MigrateSettings(_Section):
    """How batches run."""

    batch_time: float = Field(0.2, gt=0, description="target seconds per batch")
    min_batch: int = Field(10, ge=1)
    max_batch: int = Field(5000, ge=1)
    start_batch: int = Field(50, ge=1)
    lock_timeout: Duration = timedelta(seconds=2)
    #: a worker that stops talking mid-batch loses its claim after this long: PostgreSQL ends
    #: the idle transaction, rolls the batch back, and another worker takes the documents
    lease: Duration = timedelta(minutes=2)
    #: rest after every batch (pt-online-schema-change's --sleep): room for replicas, vacuum
    #: and the application; the demo uses it to make a small run last a minute
    pause_between: Duration = timedelta(0)


class BackupSettings(_Section):
    """`uuidguard backup` and the preflight's backup check."""

    #: where backups are written when --out is not given
    dir: Path = Path(".uuidguard/backups")
    #: a verified backup older than this fails the preflight
    max_age: Duration = timedelta(hours=24)
    #: the directory of pg_dump and pg_restore; empty: the embedded server's, else PATH
    pg_bin: Path | None = None

    @field_validator("pg_bin", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value


_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def _crontab_weekdays(field: str) -> str:
    """A crontab day-of-week field in APScheduler 3's terms: crontab counts 0 (and 7) as
    Sunday, APScheduler 3 counts 0 as Monday (its issue 286), so numbers become names."""
    items = []
    for item in field.split(","):
        span, _, step = item.partition("/")
        if any(c.isalpha() for c in span):
            items.append(item)  # names mean the same to both
            continue
        if span == "*":
            first, last = 0, 6
        else:
            low, _, high = span.partition("-")
            first, last = int(low), int(high or (6 if step else low))
        if not 0 <= first <= last <= 7:
            raise ValueError(f"day of week {item!r} is not within 0-7")
        days = range(first, last + 1, int(step) if step else 1)
        items.extend(_WEEKDAYS[d % 7] for d in days)
    return ",".join(dict.fromkeys(items))


def cron_trigger(expr: str, timezone: str) -> CronTrigger:
    """A 5-field crontab expression (minute hour day month weekday, crontab's own weekday
    numbers) as an APScheduler trigger in `timezone`."""
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(
            f"{expr!r} has {len(fields)} fields; a cron expression has 5: minute hour day month weekday"
        )
    try:
        fields[4] = _crontab_weekdays(fields[4])
        return CronTrigger.from_crontab(" ".join(fields), timezone=ZoneInfo(timezone))
    except (ValueError, KeyError) as exc:  # ZoneInfoNotFoundError is a KeyError
        raise ValueError(f"{expr!r} is not a cron expression ({exc})") from exc


class ThrottleSettings(_Section):
    """Database health checked before every batch (DESIGN §3.3): at or above `*_max` the worker
    waits, at or above `*_critical` the run is paused (audited). 0 or "" switches a signal off.
    `query` and Prometheus are tried when a run starts: a failure there stops the run with an
    error; later on, a failure makes the workers wait (reason `query` or `prometheus`)."""

    #: how often a waiting worker looks again
    check_interval: Duration = timedelta(seconds=1)
    #: statement timeout of the health checks (the query included) and the Prometheus timeout
    check_timeout: Duration = timedelta(seconds=5)
    #: sessions waiting for a lock on a mapped table
    lock_waiters_max: int = Field(3, ge=0)
    lock_waiters_critical: int = Field(0, ge=0)
    #: the oldest open transaction on the database (other than uuidguard's own)
    transaction_age_max: Duration = timedelta(minutes=5)
    transaction_age_critical: Duration = timedelta(0)
    #: replica replay lag, where pg_stat_replication lists replicas
    replica_lag_max: Duration = timedelta(seconds=30)
    replica_lag_critical: Duration = timedelta(minutes=5)
    #: WAL segments waiting for the archiver (archive_status .ready files; needs pg_monitor)
    archive_backlog_max: int = Field(100, ge=0)
    archive_backlog_critical: int = Field(0, ge=0)
    #: wait while autovacuum works on a mapped table
    autovacuum: bool = True
    #: client connections as a share of max_connections
    connections_max: float = Field(0.9, ge=0, le=1)
    connections_critical: float = Field(0.0, ge=0, le=1)
    #: a SQL query returning one number, run read-only with the check timeout
    query: str = ""
    query_max: float = Field(0.0, ge=0)
    query_critical: float = Field(0.0, ge=0)
    #: a Prometheus instant query returning one number (e.g. the RAG service's p99 latency)
    prometheus_url: str = ""
    prometheus_query: str = Field("", validate_default=True)
    prometheus_max: float = Field(0.0, ge=0)
    prometheus_critical: float = Field(0.0, ge=0)
    #: while this file exists every worker waits (touch it to hold the migration); "" for none
    flag_file: Path | None = Path(".uuidguard/throttle")

    @field_validator("flag_file", mode="before")
    @classmethod
    def _no_flag_file(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("prometheus_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if value and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("expected a URL such as http://prometheus:9090")
        return value.rstrip("/")

    @field_validator("prometheus_query")
    @classmethod
    def _with_url(cls, value: str, info: ValidationInfo) -> str:
        if bool(value) != bool(info.data.get("prometheus_url")):
            raise ValueError("goes with throttle.prometheus_url: set both or neither")
        return value

    @model_validator(mode="after")
    def _coherent(self) -> ThrottleSettings:
        for signal in ("query", "prometheus"):
            text = self.query if signal == "query" else self.prometheus_query
            if text and not (getattr(self, f"{signal}_max") or getattr(self, f"{signal}_critical")):
                raise ValueError(f"{signal} is set but {signal}_max and {signal}_critical are 0")
        for signal in (
            "lock_waiters",
            "transaction_age",
            "replica_lag",
            "archive_backlog",
            "connections",
            "query",
            "prometheus",
        ):
            high, critical = getattr(self, f"{signal}_max"), getattr(self, f"{signal}_critical")
            if high and critical and critical < high:
                raise ValueError(f"{signal}_critical is below {signal}_max")
        return self


class WindowSettings(_Section):
    """When batches may run: cron expressions (5 fields: minute hour day month weekday, 0 or 7
    is Sunday), read in `timezone`; a minute the expression matches is inside the window.
    Empty `allowed` means always."""

    allowed: list[str] = Field(default_factory=list)
    #: inside these, batches may take `low_traffic_batch_time` seconds instead of batch_time
    #: (a batch time set on the run with `uuidguard migrate set` wins over both)
    low_traffic: list[str] = Field(default_factory=list)
    low_traffic_batch_time: float = Field(0.5, gt=0)
    timezone: str = "UTC"

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ValueError, KeyError) as exc:
            raise ValueError(f"unknown time zone {value!r}; use an IANA name such as UTC") from exc
        return value

    @field_validator("allowed", "low_traffic")
    @classmethod
    def _crontabs(cls, value: list[str]) -> list[str]:
        for expr in value:
            cron_trigger(expr, "UTC")
        return value


class MonitoringSettings(_Section):
    """What the preflight checks is reachable when configured (issues 6 and 7 use them too)."""

    prometheus_url: str = ""
    alertmanager_url: str = ""
    #: the daemon's /metrics as Prometheus should scrape it (checked among Prometheus's targets)
    daemon_url: str = "http://127.0.0.1:9477/metrics"
    slack_token: Secret = None
    slack_base_url: str = "https://slack.com/api/"
    #: where alert messages go
    slack_channel: str = "#uuidguard"
    #: verifies /slack/interactions (Slack's request signature); unset: the endpoint refuses
    slack_signing_secret: Secret = None
    #: who may press the buttons: Slack user ids, and user group ids whose members may
    slack_allowed_users: list[str] = Field(default_factory=list)
    slack_allowed_groups: list[str] = Field(default_factory=list)
    #: Socket Mode (no public endpoint needed): an app-level token xapp-…
    slack_app_token: Secret = None
    #: Slack allows about one message per second per channel
    slack_min_interval: Duration = timedelta(seconds=1)


CANARY_MODES = ("structural", "vector_self", "http")


class CanarySettings(_Section):
    """RAG canaries (DESIGN §4): does retrieval reach a document for its owner?"""

    #: documents checked on every canary run, by id (an id the migration re-keyed is followed
    #: to its new id through the journal)
    pinned: list[str] = Field(default_factory=list)
    #: random processed documents checked on every canary run
    sample: int = Field(20, ge=0, le=10_000)
    #: modes to run: structural, vector_self, http
    modes: list[str] = Field(default_factory=lambda: ["structural", "vector_self"])
    #: vector_self: how many neighbours the application's similarity query asks for (the vector
    #: column is mapping.embeddings.vector)
    top_k: int = Field(10, ge=1, le=1000)
    #: http: the application's search endpoint; the body is a JSON template whose strings may
    #: hold {user_id}, {query} and {top_k}; the returned document ids are found at
    #: `http_ids_path` (dotted; lists on the way are searched element by element)
    http_url: str = Field("", validate_default=True)
    http_body: str = '{"user_id": "{user_id}", "query": "{query}", "top_k": 10}'
    http_ids_path: str = "results.document_id"
    http_token: Secret = None
    http_timeout: Duration = timedelta(seconds=5)
    #: http: the query is the start of one of the document's chunks, this many characters
    query_chars: int = Field(200, ge=1, le=10_000)

    @field_validator("modes")
    @classmethod
    def _known_modes(cls, value: list[str]) -> list[str]:
        unknown = [m for m in value if m not in CANARY_MODES]
        if unknown:
            raise ValueError(
                f"unknown mode {unknown[0]!r}; the modes are {', '.join(CANARY_MODES)}"
            )
        return list(dict.fromkeys(value))

    @field_validator("http_body")
    @classmethod
    def _json_template(cls, value: str) -> str:
        try:
            json.loads(value)
        except ValueError as exc:
            raise ValueError(f"not a JSON document ({exc})") from exc
        return value

    @field_validator("http_ids_path")
    @classmethod
    def _dotted_path(cls, value: str) -> str:
        if not value or any(not part for part in value.split(".")):
            raise ValueError("expected a dotted path such as results.document_id")
        return value

    @field_validator("http_url")
    @classmethod
    def _http_needs_url(cls, value: str, info: ValidationInfo) -> str:
        if "http" in info.data.get("modes", ()) and not re.match(r"^https?://", value):
            raise ValueError(
                "mode http needs the application's search endpoint (an http:// or https:// URL)"
            )
        return value


class ProbeSettings(_Section):
    """How often each probe runs (DESIGN §4); every probe has a server-side timeout."""

    interval: Duration = timedelta(seconds=60)
    full_sweep_interval: Duration = timedelta(minutes=30)
    #: the probes that scan the documents table alone (id versions, unprocessed documents)
    documents_interval: Duration = timedelta(minutes=5)
    canary_interval: Duration = timedelta(seconds=60)
    latency_interval: Duration = timedelta(seconds=15)
    timeout: Duration = timedelta(seconds=30)
    #: random extra delay added to each run, so replicas and probes do not align
    jitter: Duration = timedelta(seconds=5)
    #: new-upload conformance looks at documents created since its last run, at most this far back
    conformance_window: Duration = timedelta(hours=24)
    #: new-upload conformance: a row may commit this long after its created_at (a long upload
    #: transaction); rows this close behind the watermark are looked at again, never twice counted
    commit_lag: Duration = timedelta(minutes=5)
    #: new-upload conformance: at most this many new documents per run (the rest wait for the next)
    new_uploads_page: int = Field(10_000, ge=1, le=1_000_000)
    #: rolling orphan scan: about this many chunks per run, a range of heap blocks in physical
    #: order, wrapping around at the end
    orphan_scan_page: int = Field(10_000, ge=1, le=1_000_000)
    #: sampled pipeline consistency: random processed documents checked per run
    pipeline_sample: int = Field(200, ge=1, le=100_000)
    canary: CanarySettings = CanarySettings()


class ServeSettings(_Section):
    """`uuidguard serve`: where it listens and how its control endpoints are protected."""

    host: str = "127.0.0.1"
    port: int = Field(9477, ge=1, le=65535)
    #: bearer token of the control endpoints (/api/v1/migration/*); unset: they answer 403
    api_token: Secret = None
    #: bearer token Alertmanager sends to /hooks/alertmanager
    webhook_token: Secret = None
    #: run migration batches from the daemon (inside the windows, with the throttle)
    run_migrations: bool = True
    #: the leader's advisory lock key (one leader per database runs the probes)
    leader_lock_key: int = 0x75756964


class PolicySettings(_Section):
    """What alerts may do to a running migration (DESIGN §4, auto-rollback policy).

    An alert acts through its labels: `uuidguard_action` = pause | rollback, and for a
    rollback `uuidguard_scope` = last_batch | recent | run. Alerts about missing or failing
    data (label `uuidguard_inconclusive="true"`, or named in `inconclusive`) are never allowed
    to roll back: they notify, and pause at most.
    """

    #: decide and audit, but change nothing
    dry_run: bool = False
    #: alerts allowed to act besides the ones uuidguard ships (alerts/uuidguard.rules.yml);
    #: an unknown alert carrying an action label is refused and audited
    extra_alerts: list[str] = Field(default_factory=list)
    action_label: str = "uuidguard_action"
    scope_label: str = "uuidguard_scope"
    inconclusive_label: str = "uuidguard_inconclusive"
    inconclusive: list[str] = Field(default_factory=list)
    #: firing rollback alerts tolerated on a run before one rolls back (Argo's failureLimit);
    #: the tolerated ones pause
    failure_limit: int = Field(0, ge=0, le=100)
    #: scope `recent`: the batches committed in this window before the alert started
    recent_window: Duration = timedelta(minutes=10)
    #: after an automatic action, further alerts within this time only notify
    debounce: Duration = timedelta(seconds=30)
    #: after each batch the daemon checks its documents with the structural canary; a
    #: document the canary finds invisible pauses the run and rolls that batch back at once
    batch_canary: bool = True
    batch_canary_documents: int = Field(10, ge=1, le=1000)


class Settings(BaseSettings):
    """Everything uuidguard reads at start; passed down, never read from globals."""

    model_config = SettingsConfigDict(
        env_prefix="UUIDGUARD_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        populate_by_name=True,
    )

    database: DatabaseSettings = DatabaseSettings()
    mapping: SchemaMapping = SchemaMapping()
    id_rule: IdRuleSettings = IdRuleSettings()
    assess: AssessSettings = AssessSettings()
    migrate: MigrateSettings = MigrateSettings()
    backup: BackupSettings = BackupSettings()
    throttle: ThrottleSettings = ThrottleSettings()
    windows: WindowSettings = WindowSettings()
    monitoring: MonitoringSettings = MonitoringSettings()
    probes: ProbeSettings = ProbeSettings()
    serve: ServeSettings = ServeSettings()
    policy: PolicySettings = PolicySettings()
    journal_schema: Identifier = "uuidguard"

    @model_validator(mode="after")
    def _references_distinct(self) -> Settings:
        seen: set[tuple[str, str]] = set()
        for ref in self.reference_columns():
            if (ref.table, ref.column) in seen:
                raise ValueError(f"{ref.table}.{ref.column} is mapped twice")
            seen.add((ref.table, ref.column))
        return self

    def reference_columns(self) -> list[ReferenceMapping]:
        """Every column that holds a document id, the chunk and embedding ones first."""
        m = self.mapping
        refs = [
            ReferenceMapping(
                table=m.chunks.table, column=m.chunks.document_id, primary_key=(m.chunks.id,)
            )
        ]
        if m.embeddings is not None:
            refs.append(
                ReferenceMapping(
                    table=m.embeddings.table,
                    column=m.embeddings.document_id,
                    primary_key=(m.embeddings.id,),
                )
            )
        refs.extend(m.references)
        return refs

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # command-line flags (init) beat the environment, which beats the file
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))


def resolve_config_file(path: Path | None) -> Path | None:
    """The file to read: --config, else $UUIDGUARD_CONFIG, else ./uuidguard.toml if present."""
    if path is not None:
        if not path.is_file():
            raise ConfigError("--config", f"{path} does not exist", "give the path of a TOML file")
        return path
    env = os.environ.get(CONFIG_ENV)
    if env:
        if not Path(env).is_file():
            raise ConfigError(CONFIG_ENV, f"{env} does not exist", "point it at a TOML file")
        return Path(env)
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.is_file() else None


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Resolve settings from the file, the environment and command-line overrides."""
    path = resolve_config_file(config_file)

    class FileSettings(Settings):
        model_config = SettingsConfigDict(toml_file=path)

    try:
        return FileSettings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        raise _config_error(exc, path) from exc
    except ValueError as exc:  # a TOML syntax error surfaces as tomllib's ValueError
        raise ConfigError(str(path), f"not valid TOML ({exc})", "fix the file's syntax") from exc


def _config_error(exc: ValidationError, path: Path | None) -> ConfigError:
    first = exc.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "settings"
    key = key.replace("schema_", "schema")
    problem = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        problem = "is not a known setting"
        fix = "remove it or correct its spelling (`uuidguard config show` lists every key)"
    else:
        where = f"in {path}" if path else "in uuidguard.toml"
        env = "UUIDGUARD_" + key.upper().replace(".", "__")
        fix = f"set it {where} or with {env}"
    more = len(exc.errors()) - 1
    if more:
        problem += f" (and {more} more problem{'s' if more > 1 else ''})"
    return ConfigError(key, problem, fix)


def masked(settings: Settings) -> dict[str, Any]:
    """The resolved settings as plain data with every secret masked, for display."""
    data = settings.model_dump(mode="json", by_alias=True)
    dsn = settings.database.dsn
    data["database"]["dsn"] = mask_dsn(dsn.get_secret_value()) if dsn else None
    return data


def mask_dsn(dsn: str) -> str:
    """A DSN with its password replaced by ***, safe for logs and messages."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", dsn)
