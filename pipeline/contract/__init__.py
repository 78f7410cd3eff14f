"""The event contract: what the topics carry (events, decoding, partitioning); imports nothing else of the project."""
