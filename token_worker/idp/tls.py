"""TLS towards the IdP: the SSL context of one trust and one client certificate.

Verification is never switched off: every context requires the server's certificate
(``CERT_REQUIRED``) and checks its name against the URL's host (``check_hostname``).
What it is verified against is, first found: a credential's own CA bundle (``ca.crt``),
the worker's ``idp.caFile``, the system's CAs. Each replaces the next, as ``curl
--cacert`` does: a private CA's file trusts that CA only.

A client certificate (``tls_client_auth``) is presented from memory: OpenSSL reads a
certificate chain and key only from a path, so each is written to an anonymous memory file
(``memfd_create``, read once through ``/proc/self/fd``) and closed as soon as the context
holds it; no file ever holds the key on disk. Where memory files are not available, a
private temporary directory (mode 0700, the file 0600) is used and removed at once.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import ssl
import tempfile
from collections.abc import Iterator

from urllib3.util.ssl_ import create_urllib3_context

from token_worker.tokens.keys import CaBundle, ClientCertificate

__all__ = ["ssl_context"]


def ssl_context(*, ca: CaBundle | None = None, ca_file: str | None = None,
                certificate: ClientCertificate | None = None) -> ssl.SSLContext:
    """A client context that verifies the server against ``ca`` (a credential's bundle),
    else ``ca_file`` (``idp.caFile``), else the system's CAs, and presents
    ``certificate`` if one is given. Raises ``ssl.SSLError`` or ``OSError`` when a CA or
    the certificate cannot be loaded (never quoting the key)."""
    context = create_urllib3_context(cert_reqs=ssl.CERT_REQUIRED)
    context.check_hostname = True  # urllib3's default too; stated, as it is the point
    if ca is not None:
        context.load_verify_locations(cadata=ca.pem.decode("ascii"))
    elif ca_file:
        context.load_verify_locations(cafile=ca_file)
    else:
        context.load_default_certs()
    if certificate is not None:
        with _memory_files(certificate.chain_pem, certificate.key.pem()) as (chain, key):
            context.load_cert_chain(chain, key)
    return context


@contextlib.contextmanager
def _memory_files(*contents: bytes) -> Iterator[list[str]]:
    """Paths OpenSSL can read ``contents`` from, gone when the block ends."""
    if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
        descriptors: list[int] = []
        try:
            for content in contents:
                descriptor = os.memfd_create("token-worker-tls", os.MFD_CLOEXEC)
                descriptors.append(descriptor)
                os.write(descriptor, content)
            yield [f"/proc/self/fd/{descriptor}" for descriptor in descriptors]
        finally:
            for descriptor in descriptors:
                os.close(descriptor)
        return
    directory = tempfile.mkdtemp(prefix="token-worker-tls-")  # mode 0700
    try:
        paths = []
        for index, content in enumerate(contents):
            path = os.path.join(directory, str(index))
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(content)
            paths.append(path)
        yield paths
    finally:
        shutil.rmtree(directory, ignore_errors=True)
