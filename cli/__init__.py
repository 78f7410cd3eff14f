"""The `metering` command: its entry (``main``), the store process it starts, and the helpers of its commands."""
