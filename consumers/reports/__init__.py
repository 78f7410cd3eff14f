"""What operators and the console read out of the store: usage, plans, sessions, operator lookups."""
