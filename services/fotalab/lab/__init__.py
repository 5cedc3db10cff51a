"""Lab tooling run by operators, tests and compose jobs: provisioning, the link proxy, triggers,
fleet watching, local and compose labs, chaos campaigns, crash-point sweeps."""
