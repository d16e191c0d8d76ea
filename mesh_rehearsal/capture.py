"""Traffic capture: the nat rules ``istio-iptables`` writes for a sidecar, loaded into a pod's network
namespace.

The injection template (manifests/charts/istio-control/istio-discovery/files/injection-template.yaml,
``istio-init`` container) runs ``istio-iptables -p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x ""
-b '*' -d 15090,15021,15020``, plus ``-o 5432`` from the pod's
``traffic.sidecar.istio.io/excludeOutboundPorts`` annotation. ``nat_rules()`` writes the rules
tools/istio-iptables/pkg/capture/run.go (``IptablesConfigurator.Run``) builds for those arguments, in
its order, in the ``iptables-save`` form of its golden files (testdata/inbound-ports-wildcard.golden
for the inbound half, testdata/outbound-ports-exclude-single.golden for the outbound port exclusion).
Not reproduced: DNS capture (``-r``/ISTIO_META_DNS_CAPTURE, off in the template by default) and IPv6
(the pods here have no IPv6 address).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

PROXY_UID = "1337"
PROXY_GID = "1337"  # run.go: ProxyGID defaults to ProxyUID
INBOUND_TUNNEL_PORT = "15008"  # constants.go: HBONE's port, always left alone
OUTBOUND_CAPTURE_PORT = "15001"
INBOUND_CAPTURE_PORT = "15006"
# -d: the sidecar's own ports, never redirected (15090 Prometheus, 15021 health, 15020 agent).
EXCLUDED_INBOUND_PORTS = ("15090", "15021", "15020")
LOOPBACK = "127.0.0.1/32"  # HostIPv4LoopbackCidr's default
INBOUND_PASSTHROUGH_SOURCE = "127.0.0.6/32"  # the inbound cluster's bind address


@dataclass(frozen=True)
class CaptureArguments:
    excluded_outbound_ports: tuple[str, ...] = ("5432",)  # -o, from excludeOutboundPorts


def nat_rules(arguments: CaptureArguments = CaptureArguments()) -> list[str]:
    """The nat table as istio-iptables leaves it: chain declarations, then rules in run.go's order."""
    rules = [
        "-N ISTIO_INBOUND",
        "-N ISTIO_REDIRECT",
        "-N ISTIO_IN_REDIRECT",
        "-N ISTIO_OUTPUT",
        # Run(): the tunnel port returns first, then the two redirect chains.
        f"-A ISTIO_INBOUND -p tcp --dport {INBOUND_TUNNEL_PORT} -j RETURN",
        f"-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports {OUTBOUND_CAPTURE_PORT}",
        f"-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports {INBOUND_CAPTURE_PORT}",
        # handleInboundPortsInclude(), -b '*': exclusions (-d), then everything else to 15006.
        "-A PREROUTING -p tcp -j ISTIO_INBOUND",
        *(f"-A ISTIO_INBOUND -p tcp --dport {port} -j RETURN" for port in EXCLUDED_INBOUND_PORTS),
        "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT",
        "-A OUTPUT -j ISTIO_OUTPUT",
    ]
    # Outbound port exclusions (-o), tcp and udp, before anything else in ISTIO_OUTPUT.
    for port in arguments.excluded_outbound_ports:
        rules.append(f"-A ISTIO_OUTPUT -p tcp --dport {port} -j RETURN")
        rules.append(f"-A ISTIO_OUTPUT -p udp --dport {port} -j RETURN")
    rules.append(f"-A ISTIO_OUTPUT -o lo -s {INBOUND_PASSTHROUGH_SOURCE} -j RETURN")
    for owner in (f"--uid-owner {PROXY_UID}", f"--gid-owner {PROXY_GID}"):
        # The app calling its own service through the VIP: Envoy (client) -> Envoy (server) -> app.
        rules.append(
            f"-A ISTIO_OUTPUT -o lo ! -d {LOOPBACK} -p tcp ! --dport {INBOUND_TUNNEL_PORT} "
            f"-m owner {owner} -j ISTIO_IN_REDIRECT"
        )
        negated = owner.replace("--", "! --", 1)
        rules.append(f"-A ISTIO_OUTPUT -o lo -m owner {negated} -j RETURN")
        rules.append(f"-A ISTIO_OUTPUT -m owner {owner} -j RETURN")  # Envoy's own traffic, never looped
    rules.append(f"-A ISTIO_OUTPUT -d {LOOPBACK} -j RETURN")
    rules.append("-A ISTIO_OUTPUT -j ISTIO_REDIRECT")  # -i '*': everything else goes to 15001
    return rules


def restore_input(arguments: CaptureArguments = CaptureArguments()) -> str:
    """``iptables-restore`` input for the rules (the table is otherwise empty in a new namespace)."""
    return "\n".join(["*nat", *nat_rules(arguments), "COMMIT", ""])


def load(pid: int, arguments: CaptureArguments = CaptureArguments()) -> None:
    """The init step: load the rules into the network namespace of process ``pid`` (the pod's pause
    container), as istio-init does with NET_ADMIN before the app starts. The nat table is replaced
    whole, which also drops the rules Docker puts there for its embedded DNS server (127.0.0.11): a
    Kubernetes pod's table holds only Istio's, and these pods resolve names through /etc/hosts."""
    subprocess.run(
        ["nsenter", "-t", str(pid), "-n", "iptables-restore"],
        input=restore_input(arguments),
        text=True,
        check=True,
        capture_output=True,
        timeout=30,
    )


def saved_nat_rules(pid: int) -> list[str]:
    """The namespace's nat table as ``iptables-save -t nat`` prints it: ``-N`` for Istio's chains, then
    every ``-A`` rule (iptables-save lists rules chain by chain, each chain in its own order)."""
    output = subprocess.run(
        ["nsenter", "-t", str(pid), "-n", "iptables-save", "-t", "nat"],
        text=True,
        check=True,
        capture_output=True,
        timeout=30,
    ).stdout
    declared = [f"-N {line[1:].split()[0]}" for line in output.splitlines() if line.startswith(":ISTIO_")]
    return declared + [line for line in output.splitlines() if line.startswith("-A ")]


def canonical(rules: list[str]) -> dict[str, list[tuple[str, ...]]]:
    """Rules per chain, in order, each as its sorted option groups (``! -d 127.0.0.1/32``, ``-o lo``,
    ...) with the target last: iptables-save prints a rule's options in its own order (and adds
    ``-m tcp`` after ``-p tcp``), so the golden form and the saved form compare equal only this way."""
    chains: dict[str, list[tuple[str, ...]]] = {}
    for rule in rules:
        tokens = rule.split()
        if tokens[0] == "-N":
            chains.setdefault(tokens[1], [])
            continue
        chain, tokens = tokens[1], tokens[2:]
        target = tokens[tokens.index("-j") :]
        tokens = tokens[: tokens.index("-j")]
        groups, current = [], []
        for token in tokens:
            starts = token == "!" or (token.startswith("-") and not (current and current[-1] == "!"))
            if starts and current and current[-1] != "!":
                groups.append(" ".join(current))
                current = []
            current.append(token)
        if current:
            groups.append(" ".join(current))
        groups = [g for g in groups if g not in ("-m tcp", "-m udp")]
        chains.setdefault(chain, []).append((*sorted(groups), " ".join(target)))
    return chains
