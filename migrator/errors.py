"""Errors shown to a person: what failed, why, and how to fix it. Imports nothing from the package."""

from __future__ import annotations


class UuidguardError(Exception):
    """Base for errors shown to a person: what failed, why, and how to fix it."""

    exit_code = 2
    #: whether running the same command again, unchanged, may succeed
    retryable = False


class ConfigError(UuidguardError):
    """A configuration value is missing or wrong; `key` is its dotted name."""

    def __init__(self, key: str, problem: str, fix: str) -> None:
        super().__init__(f"config {key}: {problem}. Fix: {fix}")
        self.key = key
        self.problem = problem


class MappingError(UuidguardError):
    """The schema mapping names a table or column the database does not have."""

    def __init__(self, key: str, obj: str, problem: str, fix: str) -> None:
        super().__init__(f"{problem}: {obj} (config key {key}). Fix: {fix}")
        self.key = key
        self.obj = obj


class DatabaseUnavailableError(UuidguardError):
    """The database cannot be reached or refused the connection."""

    retryable = True

    def __init__(self, target: str, reason: str) -> None:
        super().__init__(
            f"cannot connect to the database at {target}: {reason}. Fix: check that the server "
            "is running and that database.dsn (or --dsn, or UUIDGUARD_DATABASE__DSN) is right"
        )
        self.target = target


class DatabaseError(UuidguardError):
    """A statement failed in a way the tool did not expect."""

    def __init__(self, action: str, reason: str, fix: str = "see the server log") -> None:
        super().__init__(f"{action} failed: {reason}. Fix: {fix}")
        self.action = action


class EmbeddedServerError(UuidguardError):
    """The embedded PostgreSQL could not be started or stopped."""

    def __init__(self, state_dir: str, reason: str) -> None:
        super().__init__(
            f"embedded PostgreSQL in {state_dir} failed: {reason}. Fix: read "
            f"{state_dir}/pgdata/log, or remove {state_dir}/pgdata to start afresh"
        )
        self.state_dir = state_dir


class UsageError(UuidguardError):
    """A command was called with arguments that cannot work together."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(f"{problem}. Fix: {fix}")
