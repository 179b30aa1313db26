"""Chat command handlers; importing this package registers every command."""

from handlers import admin, card, digest, export, help, recording, subscription, tasks, warnings  # noqa: F401
