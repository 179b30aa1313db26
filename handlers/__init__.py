"""Chat command handlers; importing this package registers every command."""

from handlers import card, help, recording, tasks  # noqa: F401
