"""`python -m bot …`: the same commands as `flask --app bot …`."""

from flask.cli import FlaskGroup

from bot import create_app


def main() -> None:
    """Entry point of `python -m bot`."""
    FlaskGroup(create_app=lambda: create_app(), add_default_commands=False)(prog_name="python -m bot")


if __name__ == "__main__":
    main()
