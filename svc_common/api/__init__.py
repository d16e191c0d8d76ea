"""The HTTP surface both services share: viewsets, serializers, parsing and rendering, pagination,
the OpenAPI schema, request guards, health endpoints, and the one handler that maps errors to HTTP."""
