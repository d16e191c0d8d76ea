"""The mesh's identities: a root CA made per run, and one workload certificate per ServiceAccount shaped
as Istio's CA issues them, written as the two SDS secrets Envoy asks pilot-agent for.

Istio's CA (security/pkg/pki/ca/ca.go ``Sign`` -> security/pkg/pki/util/generate_cert.go
``GenCertFromCSR``/``genCertTemplateFromCSR``) issues a workload certificate with an **empty subject**,
the SPIFFE id ``spiffe://<trust domain>/ns/<namespace>/sa/<service account>`` as its only URI SAN, marked
**critical** (``BuildSubjectAltNameExtension``: critical when the subject is empty), key usage digital
signature and key encipherment, extended key usage server and client auth, not a CA, valid for
``DEFAULT_WORKLOAD_CERT_TTL`` (24 h). The self-signed root istiod makes when no ``cacerts`` Secret exists
has subject ``O=cluster.local`` (the trust domain) and lives 10 years (``SelfSignedCACertTTL``). Here
openssl makes both; the workload key is RSA 2048 as pilot-agent's default (``WORKLOAD_RSA_KEY_SIZE``).

pilot-agent serves them to Envoy over SDS as the secrets ``default`` (certificate chain and key) and
``ROOTCA`` (trust bundle) (pkg/security/security.go ``WorkloadKeyCertResourceName``,
``RootCertReqResourceName``). Here Envoy reads them from files (file-based SDS: a DiscoveryResponse per
secret); ``write_secrets`` replaces a file by rename, which Envoy's watch picks up without a restart.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

TRUST_DOMAIN = "cluster.local"
WORKLOAD_CERT_DAYS = 1  # 24 h
ROOT_CERT_DAYS = 3650
SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
WORKLOAD_SECRET = "default"
ROOT_SECRET = "ROOTCA"


def spiffe_id(namespace: str, service_account: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/{service_account}"


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {result.stderr[-2000:]}")


@dataclass(frozen=True)
class Workload:
    identity: str  # the SPIFFE id
    certificate: str  # PEM
    key: str  # PEM


class RootCA:
    """A root key and self-signed certificate in ``directory`` (made at construction)."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        _openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "root-key.pem", "-out", "root-cert.pem",
            "-days", str(ROOT_CERT_DAYS), "-subj", f"/O={TRUST_DOMAIN}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
            cwd=self.directory,
        )  # fmt: skip
        self.certificate = (self.directory / "root-cert.pem").read_text()

    def issue(self, namespace: str, service_account: str) -> Workload:
        """A workload certificate for the ServiceAccount, signed by this root."""
        identity = spiffe_id(namespace, service_account)
        with tempfile.TemporaryDirectory(dir=self.directory) as scratch:
            work = Path(scratch)
            (work / "ext.cnf").write_text(
                "basicConstraints=critical,CA:FALSE\n"
                "keyUsage=critical,digitalSignature,keyEncipherment\n"
                "extendedKeyUsage=serverAuth,clientAuth\n"
                f"subjectAltName=critical,URI:{identity}\n"
                "authorityKeyIdentifier=keyid\n"
            )
            _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "key.pem", cwd=work)
            _openssl("req", "-new", "-key", "key.pem", "-subj", "/", "-out", "csr.pem", cwd=work)
            _openssl(
                "x509", "-req", "-in", "csr.pem", "-CA", str(self.directory / "root-cert.pem"),
                "-CAkey", str(self.directory / "root-key.pem"),
                "-set_serial", str(int.from_bytes(os.urandom(8), "big")),
                "-days", str(WORKLOAD_CERT_DAYS), "-extfile", "ext.cnf", "-out", "cert.pem",
                cwd=work,
            )  # fmt: skip
            return Workload(identity, (work / "cert.pem").read_text(), (work / "key.pem").read_text())


def _replace(path: Path, text: str, owner: int | None) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.chmod(temporary, 0o640 if owner is not None else 0o644)
    if owner is not None:
        os.chown(temporary, owner, owner)
    temporary.rename(path)  # a rename is what Envoy's file watch reacts to


def write_secrets(directory: Path, workload: Workload, root_certificate: str, owner: int | None = None) -> None:
    """``default.json`` and ``ROOTCA.json`` in ``directory``, as SDS DiscoveryResponses; readable by
    ``owner`` (the proxy's uid) alone when given."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    default = {
        "@type": SECRET_TYPE,
        "name": WORKLOAD_SECRET,
        "tls_certificate": {
            "certificate_chain": {"inline_string": workload.certificate},
            "private_key": {"inline_string": workload.key},
        },
    }
    root = {
        "@type": SECRET_TYPE,
        "name": ROOT_SECRET,
        "validation_context": {"trusted_ca": {"inline_string": root_certificate}},
    }
    for name, secret in ((WORKLOAD_SECRET, default), (ROOT_SECRET, root)):
        _replace(directory / f"{name}.json", json.dumps({"resources": [secret]}), owner)


def sds_config(path: str) -> dict:
    """An SDS source reading the DiscoveryResponse at ``path`` (as seen by Envoy)."""
    return {"path_config_source": {"path": path}, "resource_api_version": "V3"}


def mtls_context(secrets_dir: str, alpn: list[str], peer_sans: list[dict]) -> dict:
    """The ``common_tls_context`` of either end of an mTLS connection, as istiod writes both: TLS 1.2
    at least, the workload's certificate (``default``) and the root (``ROOTCA``) over SDS, and the
    peer's URI SAN checked against ``peer_sans`` (StringMatchers: the destination's exact ids on the
    client side, the trust domain's prefix on the server side)."""
    return {
        "tls_params": {"tls_minimum_protocol_version": "TLSv1_2"},
        "alpn_protocols": alpn,
        "tls_certificate_sds_secret_configs": [
            {"name": WORKLOAD_SECRET, "sds_config": sds_config(f"{secrets_dir}/{WORKLOAD_SECRET}.json")}
        ],
        "combined_validation_context": {
            "default_validation_context": {
                "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": san} for san in peer_sans]
            },
            "validation_context_sds_secret_config": {
                "name": ROOT_SECRET,
                "sds_config": sds_config(f"{secrets_dir}/{ROOT_SECRET}.json"),
            },
        },
    }
