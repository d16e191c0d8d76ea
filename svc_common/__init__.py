"""Plumbing shared by the user and order services, by concern: ``api`` (the HTTP surface), ``storage``
(repositories and the database), ``observability`` (logs, metrics, traces) and ``server`` (gunicorn);
settings from the environment (``settings_base``, ``env``), the app base class and domain errors."""
