"""Leaves every layer needs: settings, the neutral message types, template rendering, metrics.

Nothing here imports another package of this project."""
