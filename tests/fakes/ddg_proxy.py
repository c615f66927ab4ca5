"""DuckDuckGo's HTML search, behind a loopback HTTPS proxy that the real ``ddgs`` talks to.

``ddgs`` has no base URL: its DuckDuckGo engine always POSTs to
``https://html.duckduckgo.com/html/``. It does take a proxy and a CA file
(``DDGS(proxy=..., verify=...)``), so this fake is a loopback HTTP proxy that
intercepts instead of forwarding. For ``CONNECT html.duckduckgo.com:443`` it answers
``200``, terminates TLS itself with a certificate for that host signed by a throwaway CA
made at start-up (``ca_file``, to pass as ``verify=``), and serves the search page over the
tunnel. It never opens a connection of its own; a ``CONNECT`` to any other host is refused
with 403, so an engine that strays fails instead of reaching the internet.

The page has the markup ddgs parses (``div.result__body`` with an ``h2`` title link and a
direct ``a.result__snippet`` child) plus one ad, which ddgs drops. Each search's form fields
(``q``, ``l``, ...) are kept in ``queries``, each ``CONNECT`` target in ``tunnels``.
``script`` queues ``Scripted`` answers as the other fakes do: ``status`` with ``body`` (bytes)
for an error page, ``delay`` for a slow one, ``body`` (bytes) alone to replace the page.
"""

from __future__ import annotations

import datetime
import html
import ssl
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.fakes.server import Scripted

DDG_HOST = "html.duckduckgo.com"
AD_URL = "https://duckduckgo.com/y.js?ad_domain=ads.example&u3=1"
# What html.duckduckgo.com sends a client it takes for a bot (with status 202).
RATELIMIT_PAGE = (
    b"<html><body><div class='anomaly-modal__title'>"
    b"Unfortunately, bots use DuckDuckGo too.</div></body></html>"
)


class TestCertificateAuthority:
    """A throwaway CA that issues server certificates for named hosts."""

    __test__ = False  # not a pytest test class

    def __init__(self, directory: Path) -> None:
        self._dir = directory
        self._key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Orchestra test CA")])
        self._name = name
        self.cert = (
            _builder(name, name, self._key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), False)
            .sign(self._key, hashes.SHA256())
        )
        self.ca_file = directory / "ca.pem"
        self.ca_file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def server_context(self, host: str) -> ssl.SSLContext:
        """A server-side TLS context presenting a certificate for ``host``, HTTP/1.1 only."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
        ca_ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        cert = (
            _builder(subject, self._name, key.public_key())
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), False
            )
            .sign(self._key, hashes.SHA256())
        )
        cert_file, key_file = self._dir / f"{host}.pem", self._dir / f"{host}.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_file, key_file)
        # Browsers (and ddgs, which impersonates them) offer h2 first; this server speaks 1.1.
        context.set_alpn_protocols(["http/1.1"])
        return context


def _builder(
    subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def results_page(query: str, count: int = 3) -> bytes:
    """The HTML page DuckDuckGo answers a search with: an ad, then ``count`` results."""
    q = html.escape(query)
    ad = _result(AD_URL, "Ad: buy things", "Sponsored.", ad=True)
    hits = [
        _result(f"https://example.com/{n}", f"Result {n} for {q}", f"Snippet <b>{n}</b>.")
        for n in range(1, count + 1)
    ]
    return (
        "<!DOCTYPE html><html><head><title>" + q + " at DuckDuckGo</title></head><body>"
        '<div id="links" class="results">' + ad + "".join(hits) + "</div></body></html>"
    ).encode()


def _result(url: str, title: str, snippet: str, *, ad: bool = False) -> str:
    kind = "result--ad" if ad else "web-result"
    return (
        f'<div class="result results_links results_links_deep {kind}">'
        '<div class="links_main links_deep result__body">'
        f'<h2 class="result__title"><a rel="nofollow" class="result__a" href="{url}">{title}</a>'
        "</h2>"
        '<div class="result__extras"><div class="result__extras__url">'
        f'<a class="result__url" href="{url}">{url.split("/")[2]}</a></div></div>'
        f'<a class="result__snippet" href="{url}">{snippet}</a>'
        '<div class="clear"></div></div></div>'
    )


class DuckDuckGoProxy:
    """A loopback proxy serving DuckDuckGo's HTML search over intercepted TLS, until ``close``.

    Attributes:
        url: The proxy to give ddgs (``http://127.0.0.1:PORT``).
        ca_file: The PEM file of the CA that signed the intercepting certificate.
        queries: The form fields of each search request.
        tunnels: Each ``CONNECT`` target, served or refused.
    """

    def __init__(self, directory: Path) -> None:
        self.queries: list[dict[str, str]] = []
        self.tunnels: list[str] = []
        self._script: deque[Scripted] = deque()
        self._ca = TestCertificateAuthority(directory)
        self.ca_file = str(self._ca.ca_file)
        self._contexts = {DDG_HOST: self._ca.server_context(DDG_HOST)}
        self._server = _ProxyServer(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="ddg-proxy", daemon=True
        )
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def script(self, *answers: Scripted) -> None:
        """Queue what the next searches get, in order."""
        self._script.extend(answers)

    def reset(self) -> None:
        """Forget scripted answers and recorded requests."""
        self._script.clear()
        self.queries.clear()
        self.tunnels.clear()

    def close(self) -> None:
        """Stop accepting; open tunnels end when their clients hang up."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    def open_tunnel(self, target: str) -> ssl.SSLContext | None:
        """Record a ``CONNECT`` target; the TLS context to serve it with, None to refuse."""
        self.tunnels.append(target)
        host, _, port = target.rpartition(":")
        return self._contexts.get(host) if port == "443" else None

    def next_answer(self, form: dict[str, str]) -> tuple[int, bytes]:
        """Record a search's form fields; the status and page it gets."""
        self.queries.append(form)
        scripted = self._script.popleft() if self._script else Scripted()
        time.sleep(scripted.delay)
        if scripted.status is not None:
            return scripted.status, scripted.body or b""
        if isinstance(scripted.body, bytes):
            return 200, scripted.body
        return 200, results_page(form.get("q", ""))


class _ProxyServer(ThreadingHTTPServer):
    # A tunnel stays open while ddgs keeps its connection alive; never wait for it.
    block_on_close = False

    def __init__(self, fake: DuckDuckGoProxy) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.fake = fake


class _QuietHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _ProxyServer

    def log_message(self, format: str, *args: object) -> None:
        """No access log on stderr."""

    def _send(self, status: int, body: bytes, content_type: str = "text/html") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _ProxyHandler(_QuietHandler):
    """The proxy side: ``CONNECT`` to DuckDuckGo is intercepted, anything else refused."""

    def do_CONNECT(self) -> None:
        """Open the tunnel and serve the site over TLS terminated here."""
        context = self.server.fake.open_tunnel(self.path)
        self.close_connection = True
        if context is None:
            self._send(403, b"this proxy serves only DuckDuckGo", "text/plain")
            return
        self.send_response(200, "Connection Established")
        self.end_headers()
        try:
            tls = context.wrap_socket(self.connection, server_side=True)
        except (ssl.SSLError, OSError):
            return  # the client gave up on the handshake; it reports that itself
        with tls:
            _SiteHandler(tls, self.client_address, self.server)

    def do_GET(self) -> None:
        """Plain-HTTP proxying is not offered: ddgs only speaks HTTPS."""
        self._send(403, b"this proxy serves only DuckDuckGo over CONNECT", "text/plain")

    do_POST = do_GET


class _SiteHandler(_QuietHandler):
    """html.duckduckgo.com, inside the tunnel."""

    def do_POST(self) -> None:
        """``POST /html/`` with the form ``q``, ``b``, ``l`` (``s``, ``df``): the search."""
        length = int(self.headers.get("Content-Length") or 0)
        fields = parse_qs(self.rfile.read(length).decode(), keep_blank_values=True)
        if self.path.split("?")[0] != "/html/":
            self._send(404, b"not found")
            return
        status, body = self.server.fake.next_answer({k: v[0] for k, v in fields.items()})
        self._send(status, body)

    def do_GET(self) -> None:
        """Only the search form's POST is served."""
        self._send(404, b"not found")
