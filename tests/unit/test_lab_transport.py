"""One compose file, two labs: with TLS files a device talks MQTT over TLS (8883) and HTTPS;
FOTA_PLAINTEXT=1 makes the same settings the plaintext lab's (1883, http://, a password)."""
from __future__ import annotations

from fotalab.device.config import DeviceConfig
from fotalab.envconfig import Env

DEVICE = {"FOTA_DEVICE_ID": "device-1", "FOTA_SERVER_URL": "https://link:8000",
          "FOTA_TLS_CA": "/credentials/ca.pem", "FOTA_TLS_CERT": "/credentials/cert.pem",
          "FOTA_TLS_KEY": "/credentials/key.pem"}


def test_a_device_with_tls_files_uses_the_brokers_tls_port_and_https():
    config = DeviceConfig.from_env(Env(DEVICE))
    assert config.tls is not None and config.mqtt_port == 8883 and config.server_url == "https://link:8000"


def test_the_plaintext_lab_ignores_the_tls_files_and_reads_the_password_beside_them(tmp_path):
    (tmp_path / "password").write_text("secret\n")
    config = DeviceConfig.from_env(Env({**DEVICE, "FOTA_PLAINTEXT": "1",
                                        "FOTA_MQTT_PASSWORD_FILE": str(tmp_path / "password")}))
    assert config.tls is None and config.mqtt_port == 1883 and config.server_url == "http://link:8000"
    assert config.mqtt_password == "secret"


def test_the_plaintext_lab_keeps_an_http_url_as_it_is():
    config = DeviceConfig.from_env(Env({"FOTA_DEVICE_ID": "device-1", "FOTA_SERVER_URL": "http://server:8000",
                                        "FOTA_PLAINTEXT": "1"}))
    assert config.server_url == "http://server:8000"


def test_an_explicit_port_wins_and_a_provisioned_directory_still_works(tmp_path):
    (tmp_path / "device-1").mkdir()
    (tmp_path / "device-1" / "password").write_text("kept\n")
    config = DeviceConfig.from_env(Env({"FOTA_DEVICE_ID": "device-1", "FOTA_MQTT_PORT": "11883",
                                        "FOTA_CREDENTIALS_DIR": str(tmp_path)}))
    assert config.mqtt_port == 11883 and config.mqtt_password == "kept" and config.tls is None
