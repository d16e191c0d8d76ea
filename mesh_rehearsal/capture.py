"""Traffic capture: the nat rules ``istio-iptables`` writes for a sidecar, loaded into a pod's network
namespace.

The injection template (manifests/charts/istio-control/istio-discovery/files/injection-template.yaml,
``istio-init`` container) runs ``istio-iptables -p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x ""
-b '*' -d 15090,15021,15020``, plus ``-o 5432`` from the pod's
``traffic.sidecar.istio.io/excludeOutboundPorts`` annotation. ``nat_rules()`` writes the rules
tools/istio-iptables/pkg/capture/run.go (``IptablesConfigurator.Run``) builds for such arguments, in
its order, in the ``iptables-save`` form of its golden files (tools/istio-iptables/pkg/capture/testdata:
tests/mesh/test_mesh_translation.py reproduces four of them exactly). Several excluded ports share one
``-m multiport --dports`` rule, as the current golden files show (inbound-wildcard-exclude.golden,
outbound-ports-exclude.golden); releases before that change wrote one rule per port, to the same effect.
Not reproduced: DNS capture (``-r``/ISTIO_META_DNS_CAPTURE, off in the template by default), TPROXY
mode, IPv6 (the pods here have no IPv6 address).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

PROXY_UID = "1337"
PROXY_GID = "1337"  # run.go: ProxyGID defaults to ProxyUID
INBOUND_TUNNEL_PORT = "15008"  # constants.go: HBONE's port, always left alone
OUTBOUND_CAPTURE_PORT = "15001"
INBOUND_CAPTURE_PORT = "15006"
LOOPBACK = "127.0.0.1/32"  # HostIPv4LoopbackCidr's default
INBOUND_PASSTHROUGH_SOURCE = "127.0.0.6/32"  # the inbound cluster's bind address


@dataclass(frozen=True)
class CaptureArguments:
    """istio-iptables' arguments that matter here; the defaults are the injected pods' (above)."""

    inbound_ports: str = "*"  # -b: every inbound port ('' captures none)
    # -d: the sidecar's own ports, never redirected (15090 Prometheus, 15021 health, 15020 agent).
    excluded_inbound_ports: tuple[str, ...] = ("15090", "15021", "15020")
    excluded_outbound_ports: tuple[str, ...] = ("5432",)  # -o, from excludeOutboundPorts
    outbound_ranges: str = "*"  # -i: every outbound address ('' captures none)


def _ports(ports: tuple[str, ...]) -> str:
    """One port as ``--dport``, several as one multiport match (config.Split, then the rule builder)."""
    return f"--dport {ports[0]}" if len(ports) == 1 else f"-m multiport --dports {','.join(ports)}"


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
    ]
    if arguments.inbound_ports == "*":
        # handleInboundPortsInclude(), -b '*': exclusions (-d), then everything else to 15006.
        rules.append("-A PREROUTING -p tcp -j ISTIO_INBOUND")
        if arguments.excluded_inbound_ports:
            rules.append(f"-A ISTIO_INBOUND -p tcp {_ports(arguments.excluded_inbound_ports)} -j RETURN")
        rules.append("-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT")
    elif arguments.inbound_ports:
        raise NotImplementedError("inbound ports other than '*' or none")
    rules.append("-A OUTPUT -j ISTIO_OUTPUT")
    # Outbound port exclusions (-o), tcp and udp, before anything else in ISTIO_OUTPUT.
    if arguments.excluded_outbound_ports:
        rules.append(f"-A ISTIO_OUTPUT -p tcp {_ports(arguments.excluded_outbound_ports)} -j RETURN")
        rules.append(f"-A ISTIO_OUTPUT -p udp {_ports(arguments.excluded_outbound_ports)} -j RETURN")
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
    if arguments.outbound_ranges == "*":
        rules.append("-A ISTIO_OUTPUT -j ISTIO_REDIRECT")  # -i '*': everything else goes to 15001
    elif arguments.outbound_ranges:
        raise NotImplementedError("outbound ranges other than '*' or none")
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
