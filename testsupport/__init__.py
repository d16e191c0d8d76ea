"""Helpers the test suites share: real servers on loopback, never mocks of the HTTP stack."""
