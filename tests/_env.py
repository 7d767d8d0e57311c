"""Test helper: an environment variable set for one test, or removed."""


def set_env(monkeypatch, name: str, value):
    """``monkeypatch.setenv(name, value)``, or ``delenv`` (if present) when ``value`` is None."""
    if value is None:
        monkeypatch.delenv(name, raising=False)
    else:
        monkeypatch.setenv(name, value)
