import pytest

from fotalab.formats.signing import SignatureError, Signer, Verifier, generate_private_key, private_key_pem


@pytest.mark.parametrize("algorithm", ["rsa-pss-3072", "ed25519"])
def test_signature_verifies_only_for_the_signed_data(algorithm):
    signer = Signer(private_key_pem(generate_private_key(algorithm)))
    verifier = Verifier(signer.public_pem)
    signature = signer.sign(b"release")
    verifier.verify(b"release", signature, signer.key_id)
    with pytest.raises(SignatureError, match="does not match"):
        verifier.verify(b"releasE", signature, signer.key_id)


def test_unknown_algorithm_is_named_in_the_error():
    with pytest.raises(ValueError, match="rsa-pss-3072"):
        generate_private_key("dsa")
