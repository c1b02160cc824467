"""The training loop's cross-cutting concerns, one short callback each (:mod:`.callback` has the hooks)."""
