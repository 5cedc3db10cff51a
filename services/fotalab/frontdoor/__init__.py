"""The lab's front door: nginx in front of the update server (docs/server.md, "The front door")."""
