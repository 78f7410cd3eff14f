"""Local developer tooling: the KRaft broker on this machine, demo traffic, and the JSON-lines producer."""
