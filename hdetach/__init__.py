"""The top layer: the commands that drive both the study and the report.

``hdetach.cli`` is the ``hdetach-study`` command (each subcommand is a step's own CLI) and
``hdetach.nightly`` runs fresh seeds of the configured studies every night, then the report.
Nothing below imports this package (the import contracts in ``pyproject.toml`` check it).
"""
