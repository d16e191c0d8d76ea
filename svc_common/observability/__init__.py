"""What the services tell an operator: JSON log lines and the access line, Prometheus metrics and their
endpoint, OpenTelemetry traces."""
