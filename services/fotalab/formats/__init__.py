"""Wire formats shared by the signer, the server and the devices: images, manifests, signatures, key rotation, deltas."""
