"""`fota-fleetsim`: a fleet of virtual devices in one process (lab tooling).

Each virtual device runs the lab device's real update engine, bootloader and storage layer
with its own flash directory, MQTT identity and connection (modules: config, parts, session,
device, fleet, main). See docs/fleetsim.md.
"""
