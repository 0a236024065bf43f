"""Check PEM files before gRPC sees them: gRPC reports a bad certificate as "failed to bind"
(server) or "cannot connect" (client), never naming the file."""

from __future__ import annotations

import ssl
from pathlib import Path

__all__ = ["check_ca", "check_pair"]


def check_ca(path: Path) -> None:
    """Raise ValueError naming ``path`` unless it holds PEM CA certificates."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cafile=str(path))
    except ssl.SSLError as err:
        raise ValueError(f"{path}: not a valid PEM certificate ({_reason(err)})") from None
    except OSError as err:
        raise ValueError(f"{path}: {err.strerror or err}") from None


def check_pair(cert: Path, key: Path) -> None:
    """Raise ValueError naming the file at fault unless ``cert`` is a PEM certificate and
    ``key`` its PEM private key."""
    check_ca(cert)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(str(cert), str(key))
    except ssl.SSLError as err:
        if "KEY_VALUES_MISMATCH" in str(err) or "key values mismatch" in str(err):
            raise ValueError(f"{key}: not the private key of {cert}") from None
        raise ValueError(f"{key}: not a valid PEM private key ({_reason(err)})") from None
    except OSError as err:
        raise ValueError(f"{key}: {err.strerror or err}") from None


def _reason(err: ssl.SSLError) -> str:
    return str(err.reason or err.strerror or "unreadable").lower().replace("_", " ")
