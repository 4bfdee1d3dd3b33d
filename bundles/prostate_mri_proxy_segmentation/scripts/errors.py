"""The one exception type users see as a one-line message (exit code 2 from the CLI)."""

from __future__ import annotations


class ProxyBundleError(Exception):
    """Bad input or an impossible request; the message names the file/case and the problem."""

    def __init__(self, message: str, *, where: str | None = None) -> None:
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)


class InputError(ProxyBundleError):
    """A dataset, datalist, image or option that cannot be used as given."""
