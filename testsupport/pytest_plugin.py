"""Loaded by each service's pytest.ini (``-p``) before Django's settings are imported."""

import os

# Tests run with debug off, as in production, so settings demand a key; this one guards nothing.
os.environ.setdefault("DJANGO_SECRET_KEY", "test-only-not-a-secret")
