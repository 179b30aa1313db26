"""Chat command handlers; importing this package registers every command."""

from handlers import admin, binding, card, digest, export, help, recording, subscription, tasks, warnings  # noqa: F401
