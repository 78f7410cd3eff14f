"""`python -m pipeline`: the `metering` command (used to start workers as child processes)."""

from pipeline.cli import main

main()
