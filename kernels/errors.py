"""The one error type for a value a user chose that cannot work (a model size, a quant mode, a tile option):
its message is one sentence naming what to change. The harness raises and catches the same class."""


class ConfigError(ValueError):
    """A bad configuration value, path or size; the message says what to change."""
