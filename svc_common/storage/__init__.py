"""Where entities live: the repository interface and its in-memory store, the PostgreSQL repository on
Django's ORM, idempotency keys, database settings, the pooled backend and concurrent-safe migrations."""
