import pytest

from fotalab.formats.image import Behaviour, ImageError, parse_image, verify_image
from fotalab.formats.signing import Verifier
from samples import flip, make_image, make_payload


def test_signed_image_verifies_and_carries_its_header(release_key, firmware_v1):
    header = verify_image(firmware_v1, Verifier(release_key.public_pem))
    assert (header.version, header.security_counter, header.hardware) == ("1.0.0", 1, "fotalab-m4")
    assert header.behaviour is Behaviour.GOOD


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_one_flipped_byte_is_rejected(release_key, firmware_v1, where):
    with pytest.raises(ImageError):
        verify_image(flip(firmware_v1, where), Verifier(release_key.public_pem))


def test_truncated_and_overlong_images_are_rejected(release_key, firmware_v1):
    verifier = Verifier(release_key.public_pem)
    for raw in (firmware_v1[:-1], firmware_v1[:40], firmware_v1 + b"\0"):
        with pytest.raises(ImageError, match="truncated|cut or padded|shorter"):
            verify_image(raw, verifier)


def test_image_signed_by_a_foreign_key_is_rejected(release_key, foreign_key):
    image = make_image(foreign_key, "1.0.0", make_payload(1))
    with pytest.raises(ImageError, match="signed by key .* trusts key"):
        verify_image(image, Verifier(release_key.public_pem))


def test_behaviour_cannot_be_changed_without_the_key(release_key):
    image = bytearray(make_image(release_key, "2.1.0", make_payload(3), behaviour=Behaviour.CRASH_AT_BOOT))
    assert parse_image(bytes(image)).header.behaviour is Behaviour.CRASH_AT_BOOT
    image[46] = Behaviour.GOOD.value     # the behaviour byte of the header (offset 46)
    with pytest.raises(ImageError, match="does not match"):
        verify_image(bytes(image), Verifier(release_key.public_pem))
