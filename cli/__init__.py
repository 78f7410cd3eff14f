"""The metering command and the commands on top of the pipeline and its store."""
