"""Wire formats shared by the signer, the server and the devices: images, manifests,
signatures, key rotation, deltas. Pure code: no service imports, no I/O beyond bytes."""
