"""How fota-swdevice starts Debian's swupdate: suricatta's TLS files go into the configuration
file (swupdate's command line has no options for them); without TLS there is none."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from fotalab.device.swdevice import SwDeviceConfig, swupdate_command, swupdate_settings
from fotalab.envconfig import Env


def config(**env: str) -> SwDeviceConfig:
    return SwDeviceConfig.from_env(Env({"FOTA_DEVICE_ID": "swupdate-1", "FOTA_DDI_URL": "https://link:8000", **env}))


TLS = {"FOTA_TLS_CA": "/credentials/ca.pem", "FOTA_TLS_CERT": "/credentials/cert.pem",
       "FOTA_TLS_KEY": "/credentials/key.pem"}


def test_with_tls_files_suricatta_gets_them_in_its_configuration_file():
    with_tls = config(**TLS)
    settings = swupdate_settings(with_tls)
    assert settings.startswith("globals :\n{\n};\nsuricatta :\n{\n") and settings.endswith("};\n")
    for line in ('cafile = "/credentials/ca.pem";', 'sslcert = "/credentials/cert.pem";',
                 'sslkey = "/credentials/key.pem";'):
        assert line in settings
    command = swupdate_command(with_tls, "a")
    assert command[1:3] == ["-f", str(with_tls.settings_file)]
    assert "-u https://link:8000 " in command[-1]


def test_without_tls_and_in_the_plaintext_lab_there_is_no_configuration_file_and_the_url_is_http():
    assert swupdate_settings(config()) == "" and "-f" not in swupdate_command(config(), "a")
    plaintext = config(**TLS, FOTA_PLAINTEXT="1")
    assert plaintext.tls is None and "-f" not in swupdate_command(plaintext, "a")
    assert "-u http://link:8000 " in swupdate_command(plaintext, "a")[-1]


@pytest.mark.skipif(shutil.which("swupdate") is None, reason="Debian's swupdate is not installed "
                    "(apt install swupdate; scripts/test does)")
def test_debians_swupdate_reads_the_configuration_file(tmp_path):
    settings = tmp_path / "swupdate.cfg"
    settings.write_text(swupdate_settings(config(**TLS)))
    done = subprocess.run(["swupdate", "-f", str(settings), "-c", "-i", "/dev/null"], capture_output=True,
                          text=True, timeout=30)
    output = done.stdout + done.stderr
    assert "configuration file" not in output and "provide a public key file" in output, output
