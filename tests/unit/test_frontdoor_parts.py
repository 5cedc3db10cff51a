"""The front door's pure parts: its settings, its nginx configuration, and the server's reading
of its download log (partial lines, foreign lines, a log that shrank)."""
from __future__ import annotations

import json
import re
import socket

import pytest

from fotalab.envconfig import ConfigError, Env
from fotalab.frontdoor.config import FrontDoorConfig
from fotalab.frontdoor.main import addresses, health
from fotalab.frontdoor.nginxconf import render
from fotalab.server import metrics
from fotalab.server.downloadlog import DownloadLog, count_line
from fotalab.tlsfiles import file_stamp

SHA = "ab" * 32


def line(**fields) -> bytes:
    entry = {"time": 1.5, "method": "GET", "uri": f"/artifacts/{SHA}", "status": 200, "bytes": 1000, "seconds": 0.01}
    return json.dumps({**entry, **fields}).encode() + b"\n"


def downloads(kind: str) -> float:
    return metrics.DOWNLOADS.labels(kind)._value.get()


def sent(kind: str) -> float:
    return metrics.BYTES_SENT.labels(kind)._value.get()


def test_settings_default_to_the_compose_layout():
    config = FrontDoorConfig.from_env(Env({}))
    assert (config.listen, config.upstream, str(config.releases_dir)) == ("0.0.0.0:8000", "server:8000", "/releases")


@pytest.mark.parametrize("name,value", [("FOTA_FRONTDOOR_UPSTREAM", "server"), ("FOTA_FRONTDOOR_LISTEN", ":8000"),
                                        ("FOTA_FRONTDOOR_LISTEN", "0.0.0.0:99999"), ("FOTA_FRONTDOOR_WORKERS", "-1"),
                                        ("FOTA_FRONTDOOR_RECHECK_S", "0")])
def test_a_bad_setting_is_refused_by_name(name, value):
    with pytest.raises(ConfigError, match=name):
        FrontDoorConfig.from_env(Env({name: value}))


def test_the_configuration_serves_only_hashes_from_the_store_and_proxies_the_rest():
    text = render(FrontDoorConfig.from_env(Env({"FOTA_FRONTDOOR_UPSTREAM": "10.0.0.2:8000"})))
    assert 'location ~ "^/artifacts/([0-9a-f]{64})$"' in text
    assert "try_files /artifacts/$1 @server;" in text and "disable_symlinks on;" in text
    assert "server 10.0.0.2:8000;" in text and text.count("proxy_pass http://fota_server;") == 2
    assert "keepalive 64;" in text and "worker_processes auto;" in text


def test_the_upstreams_addresses_are_looked_up_and_an_unknown_name_has_none():
    assert addresses("127.0.0.1:8000") == {"127.0.0.1"}
    assert addresses("no-such-host.invalid:8000") == frozenset()


def test_a_download_line_counts_a_download_its_bytes_and_its_request():
    before, bytes_before = downloads("image"), sent("image")
    assert count_line(line(status=206, bytes=4096), lambda sha: "image")
    assert (downloads("image"), sent("image")) == (before + 1, bytes_before + 4096)


@pytest.mark.parametrize("raw", [b"not json", json.dumps({"uri": "/artifacts/x"}).encode(),
                                 line(uri="/api/v1/manifest"), line(uri="/artifacts/" + "A" * 64), line(bytes="many")])
def test_a_foreign_line_counts_nothing(raw):
    before = downloads("image")
    assert not count_line(raw, lambda sha: "image")
    assert downloads("image") == before


def test_a_head_or_a_304_is_a_request_but_not_a_download():
    before = downloads("image")
    assert count_line(line(method="HEAD", bytes=0), lambda sha: "image")
    assert count_line(line(status=304, bytes=0), lambda sha: "image")
    assert downloads("image") == before


def test_only_complete_lines_are_read_and_a_shrunk_log_is_read_again(tmp_path):
    path = tmp_path / "downloads.log"
    reader = DownloadLog(path, tmp_path / "offset", lambda sha: "delta")
    assert reader.read_new(0) == 0                                # no log yet
    whole = line(bytes=7)
    path.write_bytes(whole + whole[:10])                          # nginx is mid-way through a line
    before = downloads("delta")
    offset = reader.read_new(0)
    assert offset == len(whole) and downloads("delta") == before + 1
    path.write_bytes(whole)                                       # rotated: now shorter than the offset
    assert reader.read_new(offset + 5) == len(whole) and downloads("delta") == before + 2


@pytest.fixture
def tls_env(tmp_path) -> dict[str, str]:
    """The front door's TLS settings as compose gives them (the files need not exist to render)."""
    (tmp_path / "secret").write_text("s3cret-0123456789abcdef\n")
    return {"FOTA_TLS_CA": "/tls/ca.pem", "FOTA_TLS_CERT": "/tls/cert.pem", "FOTA_TLS_KEY": "/tls/key.pem",
            "FOTA_TLS_CRL": "/tls/crl.pem", "FOTA_FRONTDOOR_SECRET_FILE": str(tmp_path / "secret")}


def test_with_tls_nginx_verifies_client_certificates_and_sets_the_headers_itself(tls_env):
    config = FrontDoorConfig.from_env(Env(tls_env))
    assert config.secret == "s3cret-0123456789abcdef" and "s3cret" not in repr(config)
    text = render(config)
    assert "listen 0.0.0.0:8000 ssl backlog=2048;" in text
    for line in ("ssl_certificate /tls/cert.pem;", "ssl_certificate_key /tls/key.pem;",
                 "ssl_client_certificate /tls/ca.pem;", "ssl_verify_client optional;", "ssl_crl /tls/crl.pem;",
                 "ssl_protocols TLSv1.2 TLSv1.3;", 'proxy_set_header X-Fota-Frontdoor "s3cret-0123456789abcdef";',
                 "proxy_set_header X-Fota-Client-Identity $fota_client_identity;",
                 "proxy_set_header X-Fota-Client-Serial $fota_client_serial;",
                 "proxy_set_header X-Forwarded-Proto $scheme;", "SUCCESS $ssl_client_serial;"):
        assert line in text, line
    assert "ssl_crl" not in render(FrontDoorConfig.from_env(Env({**tls_env, "FOTA_TLS_CRL": ""})))


def test_without_tls_there_is_no_ssl_and_no_client_identity(tls_env):
    text = render(FrontDoorConfig.from_env(Env({})))
    assert "listen 0.0.0.0:8000 backlog=2048;" in text and "ssl_certificate" not in text
    assert 'proxy_set_header X-Fota-Frontdoor "";' in text       # nginx then drops what a client sent
    plaintext = FrontDoorConfig.from_env(Env({**tls_env, "FOTA_PLAINTEXT": "1",        # compose's workshop lab
                                              "FOTA_FRONTDOOR_SECRET_FILE": "/not/provisioned/in/the/plain/lab"}))
    assert (plaintext.tls, plaintext.tls_crl, plaintext.secret) == (None, None, "")


def cn_of(verify_and_dn: str) -> str | None:
    """What the door's identity map makes of `$ssl_client_verify:$ssl_client_s_dn` (its regex, in Python)."""
    text = render(FrontDoorConfig.from_env(Env({})))
    pattern = re.search(r'"~(\^SUCCESS:[^"]+)" \$fota_cn;', text).group(1).replace("(?<", "(?P<")
    found = re.match(pattern, verify_and_dn)
    return found.group("fota_cn") if found else None


@pytest.mark.parametrize("subject,identity", [
    ("SUCCESS:CN=device-1", "device-1"), ("SUCCESS:CN=device-1,O=fota-lab", "device-1"),
    ("SUCCESS:O=fota-lab,CN=device-1", "device-1"), ("SUCCESS:O=a\\,CN=evil,CN=device-1", "device-1"),
    ("SUCCESS:CN=x\\,CN=device-2", None), ("SUCCESS:CN=device-2+O=x", None), ("SUCCESS:O=fota-lab", None),
    ("FAILED:certificate has expired:CN=device-1", None), ("NONE:", None), ("SUCCESS:CN=device-1\\+x", None)])
def test_the_identity_is_the_verified_cn_and_an_escape_cannot_fake_one(subject, identity):
    assert cn_of(subject) == identity


@pytest.mark.parametrize("env,message", [
    ({"FOTA_FRONTDOOR_SECRET_FILE": ""}, "FOTA_FRONTDOOR_SECRET_FILE is not set"),
    ({"FOTA_FRONTDOOR_SECRET_FILE": "EMPTY"}, "is empty"),
    ({"FOTA_FRONTDOOR_SECRET_FILE": "/no/such/secret"}, "FOTA_FRONTDOOR_SECRET_FILE=/no/such/secret: cannot read"),
    ({"FOTA_FRONTDOOR_SECRET_FILE": "", "FOTA_FRONTDOOR_SECRET": 'a"b$c; 0123456789abcdef'}, "not usable"),
    ({"FOTA_FRONTDOOR_SECRET_FILE": "", "FOTA_FRONTDOOR_SECRET": "short"}, "not usable"),
    ({"FOTA_TLS_CERT": "", "FOTA_TLS_KEY": ""}, "FOTA_TLS_CERT and FOTA_TLS_KEY")])
def test_tls_settings_that_cannot_work_are_refused_with_what_to_do(tls_env, tmp_path, env, message):
    (tmp_path / "empty").write_text("\n")
    env = {k: str(tmp_path / "empty") if v == "EMPTY" else v for k, v in env.items()}
    with pytest.raises(ConfigError, match=re.escape(message)):
        FrontDoorConfig.from_env(Env({**tls_env, **env}))


def test_a_file_stamp_changes_when_the_file_is_replaced(tmp_path):
    crl = tmp_path / "crl.pem"
    assert file_stamp(crl) is None and file_stamp(None) is None
    crl.write_text("one")
    first = file_stamp(crl)
    (tmp_path / "new").write_text("one")
    (tmp_path / "new").replace(crl)        # as the lab CA writes it: same size, maybe the same mtime
    assert file_stamp(crl) != first


def test_health_says_unhealthy_when_nothing_answers(capsys):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert health(FrontDoorConfig.from_env(Env({"FOTA_FRONTDOOR_LISTEN": f"127.0.0.1:{port}"}))) == 1
    assert f"unhealthy: GET http://127.0.0.1:{port}/healthz" in capsys.readouterr().err
