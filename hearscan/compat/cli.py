"""Placeholder: subcommands registered here are being written."""


def register(subparsers) -> None:
    return None
