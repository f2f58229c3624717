"""Feature flags (P3, P4): the registry, values per scope, their record and evaluations."""
