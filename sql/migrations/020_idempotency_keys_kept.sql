-- Idempotency-Keys are kept for good (011 dropped them after two days). What a keyed request
-- publishes has ids derived from its key, and the processors remember those ids for good (an
-- order, a plan change): a key used again after its row was gone would have been a new request
-- with an old id, dropped by the processor as a copy while the console answered "accepted".
-- Kept, a key used again is always a replay (same body) or a 409 (another body). A row is one
-- mutating request's answer (a few hundred bytes; a handful per account and month).
-- (Numbered 020 to leave 012-019 to the usage migrations being written beside it.)
ALTER TABLE {database:Identifier}.idempotency_keys REMOVE TTL;
