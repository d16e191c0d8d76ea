"""Checks both Django projects run from their own unit tests (each under its own settings)."""

from django.urls import URLPattern, URLResolver, get_resolver


def unnamed_url_patterns(urlconf=None) -> list[str]:
    """Every URL pattern of the project that has no name, as its full regex. django-prometheus labels
    requests with the matched route's name, so an unnamed route would show up as "<unnamed view>"."""
    unnamed = []

    def walk(patterns, prefix):
        for pattern in patterns:
            route = prefix + str(pattern.pattern)
            if isinstance(pattern, URLResolver):
                walk(pattern.url_patterns, route)
            elif isinstance(pattern, URLPattern) and not pattern.name:
                unnamed.append(route)

    walk(get_resolver(urlconf).url_patterns, "")
    return unnamed


def url_names(urlconf=None) -> set[str]:
    """Every route name in the project, as ``resolver_match.view_name`` (namespaced) would give it."""
    names = set()

    def walk(patterns, namespace):
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                inner = f"{namespace}{pattern.namespace}:" if pattern.namespace else namespace
                walk(pattern.url_patterns, inner)
            elif pattern.name:
                names.add(namespace + pattern.name)

    walk(get_resolver(urlconf).url_patterns, "")
    return names
