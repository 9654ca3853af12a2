"""Errors a user can cause: each carries one sentence naming what to change."""


class ConfigError(ValueError):
    """A bad configuration value, path or size; the message says what to change."""


class Unsupported(RuntimeError):
    """An impl cannot run this configuration (the sweep goes on; the message says why)."""
