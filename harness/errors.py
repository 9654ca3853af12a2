"""Errors a user can cause: each carries one sentence naming what to change. ConfigError is the kernels' own class
(kernels/errors.py), so a bad model size refused by kernels.model is caught like any configuration error."""
from kernels.errors import ConfigError  # noqa: F401 - re-exported: the harness raises and catches it


class Unsupported(RuntimeError):
    """An impl cannot run this configuration (the sweep goes on; the message says why)."""


class TooLargeForDevice(ConfigError):
    """The configuration needs more memory than the device has in all (not merely more than is free now)."""
