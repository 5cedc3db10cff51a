"""Settings are read in one validating place: bad values are clear errors, renamed ones still work."""
from __future__ import annotations

from pathlib import Path

import pytest

from fotalab.device import main as device_main
from fotalab.device.config import DeviceConfig
from fotalab.envconfig import ConfigError, Env
from fotalab.lab.linkproxy import LinkConfig
from fotalab.server.config import ServerConfig
from fotalab.signer import main as signer_main


def test_a_bad_number_names_the_variable_the_value_and_what_is_allowed():
    with pytest.raises(ConfigError, match=r"FOTA_MQTT_PORT='eighty' is not a whole number; use a value from 1 to 6"):
        DeviceConfig.from_env(Env({"FOTA_MQTT_PORT": "eighty"}))


def test_a_value_out_of_range_is_refused():
    with pytest.raises(ConfigError, match=r"FOTA_SERVER_WORKERS=0 is out of range; use a value of at least 1"):
        ServerConfig.from_env(Env({"FOTA_SERVER_WORKERS": "0"}))
    with pytest.raises(ConfigError, match=r"FOTA_LINK_DROP=1.5 is out of range; use a value from 0 to 1"):
        LinkConfig.from_env(Env({"FOTA_LINK_DROP": "1.5"}))


def test_a_yes_no_setting_accepts_the_usual_words_and_refuses_others():
    assert DeviceConfig.from_env(Env({"FOTA_FLASH_WRITEBACK": "yes"})).flash_writeback is True
    assert DeviceConfig.from_env(Env({"FOTA_FLASH_WRITEBACK": "0"})).flash_writeback is False
    with pytest.raises(ConfigError, match="FOTA_FLASH_WRITEBACK='maybe' is not a yes/no setting"):
        DeviceConfig.from_env(Env({"FOTA_FLASH_WRITEBACK": "maybe"}))


def test_a_bad_flash_fault_plan_is_refused_with_its_format():
    with pytest.raises(ConfigError, match=r"FOTA_FLASH_FAULT='melt@3' is not a flash fault MODE@N"):
        DeviceConfig.from_env(Env({"FOTA_FLASH_FAULT": "melt@3"}))


def test_the_old_radio_variable_still_works_with_a_deprecation_note(capsys):
    assert DeviceConfig.from_env(Env({"FOTA_LINK_KBPS": "8"})).radio_kbps == 8.0
    assert "FOTA_LINK_KBPS is deprecated; set FOTA_RADIO_KBPS instead" in capsys.readouterr().err
    assert DeviceConfig.from_env(Env({"FOTA_LINK_KBPS": "8", "FOTA_RADIO_KBPS": "2"})).radio_kbps == 2.0


def test_a_secret_comes_from_its_file_and_a_missing_file_says_what_to_do(tmp_path: Path):
    (tmp_path / "password").write_text("s3cret\n")
    assert Env({"FOTA_MQTT_PASSWORD_FILE": str(tmp_path / "password")}).secret("FOTA_MQTT_PASSWORD") == "s3cret"
    assert Env({"FOTA_MQTT_PASSWORD": "direct"}).secret("FOTA_MQTT_PASSWORD") == "direct"
    with pytest.raises(ConfigError, match=r"FOTA_API_TOKEN_FILE=.*nothing: cannot read it .*set FOTA_API_TOKEN"):
        Env({"FOTA_API_TOKEN_FILE": str(tmp_path / "nothing")}).secret("FOTA_API_TOKEN")


def test_a_choice_lists_what_is_allowed():
    with pytest.raises(ConfigError, match="FOTA_KEY_ALGORITHM='rot13' is not allowed; use one of rsa-pss-3072, ed"):
        signer_main.SignerConfig.from_env(Env({"FOTA_KEY_ALGORITHM": "rot13"}))


def test_defaults_apply_when_nothing_is_set():
    config = DeviceConfig.from_env(Env({"FOTA_DEVICE_ID": "device-9"}))
    assert (config.device_id, config.mqtt_username, config.mqtt_port, config.watchdog_fd) == \
        ("device-9", "device-9", 1883, None)


@pytest.mark.parametrize("entry_point", [device_main.main, signer_main.main])
def test_a_service_with_a_bad_setting_exits_before_doing_anything(entry_point, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("FOTA_FLASH_DIR", str(tmp_path / "flash"))
    monkeypatch.setenv("FOTA_PATCH_MEMORY_MB", "lots")
    monkeypatch.setenv("FOTA_KEY_ALGORITHM", "rot13")
    monkeypatch.setenv("FOTA_KEYS_DIR", str(tmp_path / "keys"))
    assert entry_point(["inspect"] if entry_point is device_main.main else ["build"]) == 2
    assert "is not" in capsys.readouterr().err
    assert not (tmp_path / "flash").exists() and not (tmp_path / "keys").exists()
