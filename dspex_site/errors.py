"""The base of the domain layer's errors: refusals and failures a caller can act on.

Domain code (`llm`, `executions`, `optimization`, `programs`) raises plain exceptions that know
nothing about HTTP, the admin or the shell. Each channel maps them in one place: the API in
`dspex_site.api.handler` (status and error body), the console in `dspex_site.console`
(`show_domain_error`), management commands in `dspex_site.commands` (`CommandError`).

This module is a leaf: it imports nothing of the project, so any layer may depend on it.
"""


class DomainError(Exception):
    """A request the domain layer refuses, with a stable `code` and optional located problems.

    `str(error)` is the sentence shown to people; `code` is what clients branch on; `problems()`
    lists `{"path", "message"}` pairs pointing at the offending part of the request.
    """

    code: str = "error"
    # Seconds after which the same request may succeed (rate and queue refusals), else None.
    retry_after: float | None = None

    def summary(self) -> str:
        """One line for people (the API's `detail`, a console message)."""
        return str(self)

    def problems(self) -> list[dict[str, str]]:
        return []


class NotText(DomainError):
    """An uploaded or named file is not text in the expected encoding."""

    code = "invalid_text"

    def __init__(self, path: str, message: str) -> None:
        self.path, self.message = path, message
        super().__init__(f"{path}: {message}")

    def problems(self) -> list[dict[str, str]]:
        return [{"path": self.path, "message": self.message}]


def decode_text(data: bytes, *, path: str, encoding: str = "utf-8-sig") -> str:
    """`data` as text, or NotText naming `path` and where the first undecodable byte is."""
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        byte = data[exc.start : exc.start + 1].hex()
        raise NotText(path, f"is not UTF-8 text (byte 0x{byte} at offset {exc.start})") from None


class QueueUnavailable(DomainError):
    """The broker refused a publish: nothing was queued (and the row is marked so)."""

    code = "queue_unavailable"
