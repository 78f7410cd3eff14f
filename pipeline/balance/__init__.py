"""R12 and the plans: plans, prepaid balances, balance alerts, entitlement (R11's seats: ``pipeline.rules.agents``).

A functional core like `pipeline.rules`: inputs in, state and output records out; no I/O, no
clock, no framework. State is made of msgspec structs so an adapter can persist it as it is.
``docs/balances.md`` explains the rules and the decisions from an operator's point of view.
"""
