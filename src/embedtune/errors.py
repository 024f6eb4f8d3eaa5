"""The one exception type that means "the user can fix this": the CLI prints it as one line, no traceback."""


class EmbedtuneError(Exception):
    """Bad input or configuration. The message names the file, line or key, and the fix."""


def raise_if_invalid(found: list[str]) -> None:
    """Every impossible setting at once, before anything runs."""
    if found:
        raise EmbedtuneError("invalid settings (nothing was run):\n  - " + "\n  - ".join(found))
