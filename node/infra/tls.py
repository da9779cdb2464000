"""TLS contexts for DICOM TLS (PS3.15 B.1, BCP 195: TLS 1.2 or later) from the node's `tls` settings."""

from __future__ import annotations

import ssl

from node.config import TlsConfig


def server_context(tls: TlsConfig) -> ssl.SSLContext | None:
    """For the SCP; None when no certificate is configured (plain DICOM)."""
    if tls.certificate is None or tls.private_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=tls.ca_certificates)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls.certificate, tls.private_key)
    context.verify_mode = ssl.CERT_REQUIRED if tls.require_peer_certificate else ssl.CERT_NONE
    return context


def client_context(tls: TlsConfig) -> ssl.SSLContext:
    """For sending to a TLS destination: its certificate must chain to ca_certificates and name its host."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.ca_certificates)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.certificate is not None and tls.private_key is not None:
        context.load_cert_chain(tls.certificate, tls.private_key)
    return context
