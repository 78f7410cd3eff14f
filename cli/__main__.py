"""`python -m cli`: the `metering` command (used to start workers as child processes)."""

from cli.main import main

main()
