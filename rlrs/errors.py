"""Errors raised for bad user input, before any work starts."""


class ConfigError(ValueError):
    """A bad setting, named by its field path, raised before any work starts."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")
