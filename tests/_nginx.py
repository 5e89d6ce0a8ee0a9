"""A real nginx process serving a folder (the controller's TUF repository) on loopback.

Like ``MosquittoProcess``: a generated config in a work folder (``daemon off``, pid,
error and access logs there), a free port on 127.0.0.1, started in the foreground and
waited for until it accepts connections, stopped at teardown. The cache headers are
the ones docs/operations.md gives for a production front. With ``tls=True`` it serves
HTTPS with a certificate made here for 127.0.0.1 (``ca_file`` verifies it).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import subprocess
from pathlib import Path

from edgefleet.simulations.brokers import free_port, wait_for_port

_SERVER = """\
{user}worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log {work}/access.log;
    client_body_temp_path {work}/tmp/body;
    proxy_temp_path {work}/tmp/proxy;
    fastcgi_temp_path {work}/tmp/fastcgi;
    uwsgi_temp_path {work}/tmp/uwsgi;
    scgi_temp_path {work}/tmp/scgi;
    types {{ application/json json; }}
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port}{ssl};
{tls}        root {root};
        # consistent snapshots: every file is immutable by name but the timestamp;
        # a 404 (a device probing for the next root) carries no cache header
        location /metadata/ {{
            add_header Cache-Control "public, max-age=31536000, immutable";
        }}
        location = /metadata/timestamp.json {{
            add_header Cache-Control "no-cache";
        }}
        location /targets/ {{
            add_header Cache-Control "public, max-age=31536000, immutable";
        }}
        location / {{ return 404; }}
    }}
}}
"""


def find_nginx() -> str:
    """Raises: FileNotFoundError naming the package to install."""
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)),
        None)
    if found is None:
        raise FileNotFoundError("nginx is not installed (Debian/Ubuntu: apt-get install "
                                "nginx); scripts/test installs it")
    return found


def _certificate(work: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 that is its own CA: (cert, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgefleet test repository")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = work / "repo.crt", work / "repo.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class NginxProcess:
    """nginx serving ``root`` read-only at ``url`` (ends with ``/``).

    Raises:
        FileNotFoundError: nginx is not installed.
        RuntimeError: from ``start``: nginx exited or did not listen in time (its
            error log is in the message).
    """

    def __init__(self, root: Path, workdir: Path, *, tls: bool = False) -> None:
        self.root = root
        self.work = workdir
        self.tls = tls
        self.port = 0
        self.ca_file: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}/"

    @property
    def access_log(self) -> str:
        path = self.work / "access.log"
        return path.read_text() if path.exists() else ""

    def start(self, timeout_s: float = 10.0) -> None:
        binary = find_nginx()
        (self.work / "tmp").mkdir(parents=True, exist_ok=True)
        ssl, tls = "", ""
        if self.tls:
            cert, key = _certificate(self.work)
            self.ca_file = cert
            ssl = " ssl"
            tls = f"        ssl_certificate {cert};\n        ssl_certificate_key {key};\n"
        self.port = free_port()
        # as root, nginx's workers would run as "nobody", who cannot read a test's folders
        user = "user root root;\n" if os.geteuid() == 0 else ""
        conf = self.work / "nginx.conf"
        conf.write_text(_SERVER.format(user=user, work=self.work, port=self.port, ssl=ssl,
                                       tls=tls, root=self.root))
        with open(self.work / "stderr.log", "ab") as stderr:
            self._proc = subprocess.Popen(
                [binary, "-c", str(conf), "-p", str(self.work), "-e",
                 str(self.work / "error.log"), "-g", "daemon off;"],
                stdout=subprocess.DEVNULL, stderr=stderr)
        if not wait_for_port("127.0.0.1", self.port, timeout_s) or self._proc.poll() is not None:
            self.stop()
            log = self.work / "error.log"
            raise RuntimeError(f"nginx did not listen on {self.port}: "
                               f"{log.read_text() if log.exists() else ''}")

    def stop(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=5)
        self._proc = None

    def __enter__(self) -> NginxProcess:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
