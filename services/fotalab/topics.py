"""MQTT topic layout, versioned so the payloads can evolve: fota/v1/...

    fota/v1/devices/<id>/cmd     server -> device  commands (QoS 1, never retained): hints only
    fota/v1/devices/<id>/state   device -> all     current state (QoS 1, retained)
    fota/v1/devices/<id>/events  device -> server  transitions (QoS 1)
    fota/v1/devices/<id>/status  "online" / "offline" (retained; "offline" is the last will)
    fota/v1/fleet/cmd            server -> every device (QoS 1, never retained)
"""
PREFIX = "fota/v1"
FLEET_COMMANDS = f"{PREFIX}/fleet/cmd"
KINDS = ("cmd", "state", "events", "status")


def device_topic(device_id: str, kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown topic kind {kind!r}")
    if not device_id or any(c in device_id for c in "/+#"):
        raise ValueError(f"device id {device_id!r} must be non-empty without '/', '+' or '#'")
    return f"{PREFIX}/devices/{device_id}/{kind}"
