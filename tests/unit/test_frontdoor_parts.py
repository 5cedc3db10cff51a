"""The front door's pure parts: its settings, its nginx configuration, and the server's reading
of its download log (partial lines, foreign lines, a log that shrank)."""
from __future__ import annotations

import json

import pytest

from fotalab.envconfig import ConfigError, Env
from fotalab.frontdoor.config import FrontDoorConfig
from fotalab.frontdoor.main import addresses
from fotalab.frontdoor.nginxconf import render
from fotalab.server import metrics
from fotalab.server.downloadlog import DownloadLog, count_line

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
