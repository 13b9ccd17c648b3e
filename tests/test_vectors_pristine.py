import pytest

from conftest import SHARED_VECTORS, VECTORS

pytestmark = pytest.mark.unit


def test_every_vector_file_is_present():
    names = {p.name for p in VECTORS.glob("*.json")}
    assert len(names) == 15, names


@pytest.mark.skipif(not SHARED_VECTORS.is_dir(), reason="../shared/bybit-vectors not beside this checkout")
def test_copies_match_the_shared_originals():
    for original in SHARED_VECTORS.glob("*.json"):
        assert (VECTORS / original.name).read_bytes() == original.read_bytes(), original.name
