"""Infrastructure the processes share: Kafka helpers, metrics, logs, the compiled engine's loader, failpoints."""
