"""Domain exceptions that both services' business logic raises; nothing here knows of HTTP
(svc_common.api.exception_handler translates them, as ``settings.DOMAIN_ERRORS`` says)."""


class FieldError(Exception):
    """A domain rule broken by one field of the request: answered like a serializer's field error,
    ``{"<field>": ["<message>"]}``, so clients handle both the same way."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
