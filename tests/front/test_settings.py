"""The front door's settings and its servers' configs (HAProxy, Caddy), without starting anything."""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import pytest

from rma.front import FrontSettings, caddy_config, client_context, haproxy_config
from rma.front.haproxy import haproxy_command
from rma.front.local_ca import make_local_ca
from rma.front.settings import TlsCheck, first_certificate, haproxy_path


def test_the_front_door_runs_for_tls_or_any_address_but_loopback(tmp_path: Path) -> None:
    ca = make_local_ca(tmp_path, ["localhost"])
    plain, tls = FrontSettings(), FrontSettings(ca.cert, ca.key)
    assert not plain.needed("127.0.0.1") and not plain.needed("localhost") and not plain.needed("::1")
    assert plain.needed("0.0.0.0") and plain.needed("192.0.2.10") and plain.needed("::")
    assert tls.needed("127.0.0.1") and tls.scheme() == "https" and plain.scheme() == "http"


def test_settings_refuse_half_a_pair_a_missing_file_and_limits_that_disable_themselves(tmp_path: Path) -> None:
    ca = make_local_ca(tmp_path, ["localhost"])
    with pytest.raises(ValueError, match="both"):
        FrontSettings(ca.cert, None)
    with pytest.raises(ValueError, match="not found"):
        FrontSettings(ca.cert, tmp_path / "absent.pem")
    with pytest.raises(ValueError, match="timeouts"):
        FrontSettings.from_env({"RMA_HEADER_TIMEOUT_S": "0"})
    limits = FrontSettings.from_env({"RMA_TLS_CERT": str(ca.cert), "RMA_TLS_KEY": str(ca.key),
                                     "RMA_IDLE_TIMEOUT_S": "5", "RMA_MAX_HEADER_KB": "16"})
    assert (limits.tls, limits.idle_timeout_s, limits.max_header_bytes) == (True, 5.0, 16 * 1024)
    assert FrontSettings.from_env({}, str(ca.cert), str(ca.key)).cert == ca.cert.resolve()


def test_haproxy_is_the_front_door_where_installed_and_caddy_serves_acme_names() -> None:
    assert haproxy_path() is not None  # make test installs Debian's haproxy
    assert FrontSettings().engine == "haproxy"
    assert FrontSettings.from_env({"RMA_TLS_DOMAIN": "edge.example.org"}).engine == "caddy"
    assert FrontSettings.from_env({"RMA_FRONT_ENGINE": "caddy"}).engine == "caddy"
    with pytest.raises(ValueError, match="ACME"):
        FrontSettings.from_env({"RMA_TLS_DOMAIN": "edge.example.org", "RMA_FRONT_ENGINE": "haproxy"})
    with pytest.raises(ValueError, match="RMA_FRONT_ENGINE"):
        FrontSettings.from_env({"RMA_FRONT_ENGINE": "nginx"})
    with pytest.raises(ValueError, match="RMA_MAX_CLIENT_CONNECTIONS"):
        FrontSettings.from_env({"RMA_MAX_CLIENT_CONNECTIONS": "0"})


def test_haproxy_relays_everything_to_the_private_socket_with_the_limits(tmp_path: Path) -> None:
    ca = make_local_ca(tmp_path, ["localhost"])
    settings = FrontSettings(ca.cert, ca.key, header_timeout_s=3, idle_timeout_s=30, max_header_bytes=8192,
                             max_client_connections=50)
    lines = [line.strip() for line in haproxy_config(settings, "::", 8443, tmp_path / "engine.sock",
                                                     tmp_path).splitlines()]
    assert f"bind [::]:8443 ssl crt {tmp_path / 'certificate.pem'} alpn h2,http/1.1" in lines
    assert {"timeout http-request 3000ms", "timeout http-keep-alive 30000ms", "timeout client 30000ms",
            "tune.bufsize 9216", f"server engine unix@{tmp_path / 'engine.sock'}"} <= set(lines)
    assert "tcp-request connection reject if { sc0_conn_cur gt 50 }" in lines
    assert "http-request set-header X-Forwarded-For %[src]" in lines
    assert not any(line.startswith(("stats", "log")) for line in lines)  # no admin socket, no access log
    plain = haproxy_config(FrontSettings(), "0.0.0.0", 80, tmp_path / "engine.sock", tmp_path)
    assert "bind 0.0.0.0:80\n" in plain and "X-Forwarded-Proto http\n" in plain


def test_haproxy_s_certificate_file_and_config_are_private_and_its_own_answers_json(tmp_path: Path) -> None:
    ca = make_local_ca(tmp_path / "tls", ["localhost"])
    folder = tmp_path / "door"
    folder.mkdir(mode=0o700)
    argv, env = haproxy_command(FrontSettings(ca.cert, ca.key), "127.0.0.1", 8443, folder / "engine.sock", folder)
    assert argv[-2:] == ["-f", str(folder / "haproxy.cfg")] and "RMA_TLS_KEY" not in env
    pem = folder / "certificate.pem"
    assert pem.stat().st_mode & 0o777 == 0o600 and (folder / "haproxy.cfg").stat().st_mode & 0o777 == 0o600
    assert pem.read_bytes().endswith(ca.key.read_bytes())
    head, _, body = (folder / "502.http").read_bytes().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 502 Bad Gateway") and b"application/json" in head
    assert json.loads(body) == {"error": "front door: Bad Gateway"}


def test_caddy_relays_everything_to_the_private_socket_with_the_limits_and_no_admin_api(tmp_path: Path) -> None:
    ca = make_local_ca(tmp_path, ["localhost"])
    config = caddy_config(FrontSettings(ca.cert, ca.key, header_timeout_s=3, idle_timeout_s=30,
                                        max_header_bytes=8192), "::", 8443, tmp_path / "engine.sock", tmp_path)
    server = config["apps"]["http"]["servers"]["front"]
    assert config["admin"] == {"disabled": True}
    assert server["listen"] == ["[::]:8443"]
    assert (server["read_header_timeout"], server["idle_timeout"], server["max_header_bytes"]) == (
        "3000ms", "30000ms", 8192)
    relay = server["routes"][0]["handle"][0]
    assert relay["upstreams"] == [{"dial": f"unix/{tmp_path / 'engine.sock'}"}]
    assert server["protocols"] == ["h1", "h2"]
    assert config["apps"]["tls"]["certificates"]["load_files"][0]["key"] == str(ca.key)
    plain = caddy_config(FrontSettings(), "0.0.0.0", 80, tmp_path / "engine.sock", tmp_path)
    assert "tls" not in plain["apps"] and "tls_connection_policies" not in plain["apps"]["http"]["servers"]["front"]


def test_the_local_ca_keeps_its_key_private_and_clients_verify_against_it(tmp_path: Path) -> None:
    ca = make_local_ca(tmp_path / "tls", ["localhost", "127.0.0.1"])
    assert ca.key.stat().st_mode & 0o777 == 0o600 and ca.cert.stat().st_mode & 0o777 == 0o644
    context = client_context({"RMA_CA_FILE": str(ca.ca_file)})
    assert isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert client_context({}) is True
    with pytest.raises(ValueError, match="RMA_CA_FILE"):
        client_context({"RMA_CA_FILE": str(tmp_path / "absent.pem")})
    check = TlsCheck.of(ca.cert, {"RMA_CA_FILE": str(ca.ca_file)})
    assert check.context.verify_mode == ssl.CERT_REQUIRED
    assert check.certificate == ssl.PEM_cert_to_DER_cert(first_certificate(ca.cert.read_text()))
    assert check.certificate != ssl.PEM_cert_to_DER_cert(ca.ca_file.read_text())  # the server's, not the CA's


def test_an_acme_name_gets_caddy_s_acme_issuer_with_its_storage_kept_and_no_http_challenge(tmp_path: Path) -> None:
    settings = FrontSettings.from_env({"RMA_TLS_DOMAIN": "edge.example.org", "RMA_ACME_EMAIL": "ops@example.org",
                                       "RMA_ACME_STORAGE": str(tmp_path / "acme"), "HOME": str(tmp_path)})
    assert settings.tls and settings.scheme() == "https" and settings.needed("127.0.0.1")
    config = caddy_config(settings, "0.0.0.0", 443, tmp_path / "engine.sock", tmp_path / "temporary")
    assert config["storage"]["root"] == str((tmp_path / "acme").resolve())
    policy = config["apps"]["tls"]["automation"]["policies"][0]
    assert policy["subjects"] == ["edge.example.org"] and config["apps"]["tls"]["certificates"]["automate"] == [
        "edge.example.org"]
    (issuer,) = policy["issuers"]
    assert issuer == {"module": "acme", "challenges": {"http": {"disabled": True}}, "email": "ops@example.org"}
    default_home = FrontSettings.from_env({"RMA_TLS_DOMAIN": "edge.example.org", "HOME": str(tmp_path)})
    assert default_home.acme is not None and default_home.acme.storage == tmp_path / ".local/share/rma/acme"
    ca = make_local_ca(tmp_path / "tls", ["localhost"])
    with pytest.raises(ValueError, match="not both"):
        FrontSettings.from_env({"RMA_TLS_DOMAIN": "edge.example.org"}, str(ca.cert), str(ca.key))
