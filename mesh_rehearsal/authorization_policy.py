"""AuthorizationPolicy -> ``envoy.filters.http.rbac`` filters for a sidecar's inbound HTTP chains, as
istiod's authz builder makes them (pilot/pkg/security/authz/builder/builder.go ``BuildHTTP``; rules in
pilot/pkg/security/authz/model/model.go and generator.go):

- policies selecting the workload (``selector.matchLabels``, or none: the whole namespace) are grouped
  by action, and each action present gets its own filter, in the order DENY, ALLOW (AUDIT and CUSTOM
  are not used here and are refused);
- each rule becomes a policy named ``ns[<namespace>]-policy[<name>]-rule[<index>]``: permissions are
  an AND of the ``to`` operations' fields, each an OR of its values; principals an AND of the ``from``
  sources' fields; a policy without rules (``allow-nothing``) adds no policy, so an ALLOW filter whose
  policies match nothing denies every request: the default deny once an ALLOW policy selects the
  workload;
- ``principals`` match ``authenticated.principal_name`` exactly on the peer certificate's URI SAN
  (``spiffe://`` + the principal); ``paths`` match the path without query (``url_path``), ``/x/*`` as
  the prefix ``/x/`` and ``*`` alone as any path; ``methods`` match the ``:method`` header;
- outbound listeners get none (``BuildHTTP`` returns nothing for the outbound listener class).
"""

from __future__ import annotations

from .model import checked, selects

RBAC_TYPE = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
NETWORK_RBAC_TYPE = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"
ACTIONS = ("DENY", "ALLOW")  # builder.go: the order of the filters
_RULE_FIELDS = {"from", "to"}
_SOURCE_FIELDS = {"principals"}
_OPERATION_FIELDS = {"paths", "methods"}


def _path(path: str) -> dict:
    """generator.go ``pathGenerator`` / matcher.StringMatcherWithPrefix: ``*`` any, ``/x/*`` prefix, else exact."""
    if path == "*":
        return {"url_path": {"path": {"safe_regex": {"regex": ".+"}}}}
    if path.endswith("*"):
        return {"url_path": {"path": {"prefix": path[:-1]}}}
    if path.startswith("*"):
        return {"url_path": {"path": {"suffix": path[1:]}}}
    return {"url_path": {"path": {"exact": path}}}


def _principal(principal: str) -> dict:
    return {"authenticated": {"principal_name": {"exact": f"spiffe://{principal}"}}}


def _rule_policy(rule: dict, where: str) -> dict:
    checked(rule, _RULE_FIELDS, where)
    permissions: list[dict] = []
    for to in rule.get("to", []):
        operation = checked(to["operation"], _OPERATION_FIELDS, f"{where} operation")
        ands = []
        if "paths" in operation:
            ands.append({"or_rules": {"rules": [_path(p) for p in operation["paths"]]}})
        if "methods" in operation:
            ands.append(
                {
                    "or_rules": {
                        "rules": [
                            {"header": {"name": ":method", "string_match": {"exact": m}}} for m in operation["methods"]
                        ]
                    }
                }
            )
        permissions.append({"and_rules": {"rules": ands or [{"any": True}]}})
    principals: list[dict] = []
    for source in rule.get("from", []):
        source = checked(source["source"], _SOURCE_FIELDS, f"{where} source")
        ids = [{"or_ids": {"ids": [_principal(p) for p in source["principals"]]}}]
        principals.append({"and_ids": {"ids": ids}})
    return {
        "permissions": permissions or [{"and_rules": {"rules": [{"any": True}]}}],
        "principals": principals or [{"and_ids": {"ids": [{"any": True}]}}],
    }


def selecting(policies: list[dict], namespace: str, labels: dict) -> list[dict]:
    chosen = []
    for policy in policies:
        if policy["metadata"].get("namespace", namespace) != namespace:
            continue
        selector = ((policy.get("spec") or {}).get("selector") or {}).get("matchLabels")
        if selects(selector, labels):
            chosen.append(policy)
    return chosen


def http_filters(policies: list[dict], namespace: str, labels: dict) -> list[dict]:
    """The RBAC filters of an inbound HTTP chain of the workload with ``labels``."""
    by_action: dict[str, dict] = {}
    for policy in selecting(policies, namespace, labels):
        spec = checked(
            policy.get("spec") or {},
            {"selector", "action", "rules"},
            f"AuthorizationPolicy {policy['metadata']['name']}",
        )
        action = spec.get("action", "ALLOW")
        if action not in ACTIONS:
            raise NotImplementedError(f"AuthorizationPolicy action {action}")
        rules = by_action.setdefault(action, {})
        name = policy["metadata"]["name"]
        for index, rule in enumerate(spec.get("rules") or []):
            key = f"ns[{namespace}]-policy[{name}]-rule[{index}]"
            rules[key] = _rule_policy(rule, key)
    filters = []
    for action in ACTIONS:
        if action in by_action:
            filters.append(
                {
                    "name": "envoy.filters.http.rbac",
                    "typed_config": {
                        "@type": RBAC_TYPE,
                        "rules": {"action": action, "policies": by_action[action]},
                        "shadow_rules_stat_prefix": f"istio_dry_run_{action.lower()}_",
                    },
                }
            )
    return filters


def network_filters(policies: list[dict], namespace: str, labels: dict) -> list[dict]:
    """The RBAC network filter of a TCP chain (the inbound passthrough): builder.go ``BuildTCP`` drops
    every ALLOW rule that names HTTP-only fields (paths, methods), so such policies allow nothing over TCP."""
    filters = []
    for http_filter in http_filters(policies, namespace, labels):
        rules = http_filter["typed_config"]["rules"]
        tcp_policies = {
            key: policy
            for key, policy in rules["policies"].items()
            if "url_path" not in str(policy) and ":method" not in str(policy)
        }
        filters.append(
            {
                "name": "envoy.filters.network.rbac",
                "typed_config": {
                    "@type": NETWORK_RBAC_TYPE,
                    "rules": {"action": rules["action"], "policies": tcp_policies},
                    "stat_prefix": "tcp.",
                },
            }
        )
    return filters
