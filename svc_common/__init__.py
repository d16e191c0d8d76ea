"""Plumbing shared by the user and order services: settings, logging, errors, paging, health, gunicorn."""
