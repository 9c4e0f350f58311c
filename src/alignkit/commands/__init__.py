"""The CLI commands, one module per command group; :mod:`alignkit.cli` assembles them.

Each module defines a ``typer.Typer`` (a group) or registers commands on the app it is given,
using :func:`alignkit.commands._options.config_command` so every option comes from the
command's pydantic config. Modules import heavy libraries (torch, transformers) only inside
command bodies, so ``alignkit --help`` stays fast.
"""
