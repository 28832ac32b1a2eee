"""The error every config check raises: its message names the offending field."""


class ConfigError(ValueError):
  """An impossible or malformed config; the message names the field."""


def require(ok: bool, message: str) -> None:
  """Raises ``ConfigError(message)`` unless ``ok``."""
  if not ok:
    raise ConfigError(message)
