"""Django's PostgreSQL backend with the connection pool's check bounded in time (``base.DatabaseWrapper``)."""
