import base64
import io
import os
import struct
from pathlib import Path

import pytest

from callwarden.recorder import (
    DecryptionError,
    Key,
    KeyLoadError,
    decrypt_stream,
    encrypt_stream,
    key_id_for,
    load_key,
    make_keyring,
)
from callwarden.recorder.crypto import MAGIC, TAG_SIZE

CHUNK = 1024  # small chunks make multi-chunk cases cheap


@pytest.fixture
def key() -> Key:
    material = os.urandom(32)
    return Key(key_id_for(material), material)


def encrypt(data: bytes, key: Key, chunk_size: int = CHUNK) -> bytes:
    out = io.BytesIO()
    assert encrypt_stream(io.BytesIO(data), out, key, chunk_size=chunk_size) == len(data)
    return out.getvalue()


def decrypt(blob: bytes, *keys: Key) -> bytes:
    out = io.BytesIO()
    decrypt_stream(io.BytesIO(blob), out, make_keyring(*keys))
    return out.getvalue()


def header_len(key: Key) -> int:
    return len(MAGIC) + 2 + len(key.key_id) + 4 + 16 + 7


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK, 7 * CHUNK + 3])
def test_round_trip(key, size):
    data = os.urandom(size)
    blob = encrypt(data, key)
    chunks = max(1, -(-size // CHUNK))
    assert len(blob) == header_len(key) + size + chunks * TAG_SIZE
    assert decrypt(blob, key) == data


def test_round_trip_default_chunk_size_multi_chunk(key):
    data = os.urandom(3 * 65536 + 17)
    assert decrypt(encrypt(data, key, chunk_size=65536), key) == data


def test_header_carries_magic_version_and_key_id(key):
    blob = encrypt(b"hello", key)
    assert blob.startswith(MAGIC)
    assert blob[len(MAGIC)] == 1
    assert blob[len(MAGIC) + 2 : len(MAGIC) + 2 + len(key.key_id)] == key.key_id.encode()
    assert b"hello" not in blob


def test_same_plaintext_encrypts_differently(key):
    assert encrypt(b"x" * 100, key) != encrypt(b"x" * 100, key)


def test_missing_key_names_the_key_id(key):
    other = Key("other", os.urandom(32))
    with pytest.raises(DecryptionError) as e:
        decrypt(encrypt(b"data", key), other)
    assert key.key_id in str(e.value)
    assert e.value.key_id == key.key_id


def test_wrong_key_under_the_same_id(key):
    impostor = Key(key.key_id, os.urandom(32))
    with pytest.raises(DecryptionError, match=key.key_id):
        decrypt(encrypt(b"data" * 1000, key), impostor)


@pytest.mark.parametrize("where", ["header", "first", "middle", "last"])
def test_one_flipped_byte_is_detected(key, where):
    blob = bytearray(encrypt(os.urandom(4 * CHUNK + 10), key))
    h = header_len(key)
    pos = {
        "header": h - 3,
        "first": h + 5,
        "middle": h + 2 * (CHUNK + TAG_SIZE) + 7,
        "last": len(blob) - 1,
    }[where]
    blob[pos] ^= 0x01
    with pytest.raises(DecryptionError):
        decrypt(bytes(blob), key)


@pytest.mark.parametrize("cut", ["chunk_boundary", "mid_chunk", "header", "tag"])
def test_truncation_is_detected(key, cut):
    blob = encrypt(os.urandom(3 * CHUNK), key)
    h, step = header_len(key), CHUNK + TAG_SIZE
    keep = {
        "chunk_boundary": h + 2 * step,
        "mid_chunk": h + step + 100,
        "header": h - 1,
        "tag": h + 2 * step + 5,
    }[cut]
    with pytest.raises(DecryptionError):
        decrypt(blob[:keep], key)


def test_appended_data_is_detected(key):
    blob = encrypt(os.urandom(2 * CHUNK), key)
    with pytest.raises(DecryptionError):
        decrypt(blob + os.urandom(CHUNK + TAG_SIZE), key)


def test_swapped_and_dropped_chunks_are_detected(key):
    blob = encrypt(os.urandom(3 * CHUNK + 1), key)
    h, step = header_len(key), CHUNK + TAG_SIZE
    head, body = blob[:h], blob[h:]
    c = [body[i : i + step] for i in range(0, len(body), step)]
    assert len(c) == 4
    for forged in (c[1] + c[0] + c[2] + c[3], c[0] + c[2] + c[1] + c[3], c[0] + c[2] + c[3]):
        with pytest.raises(DecryptionError):
            decrypt(head + forged, key)


def test_chunk_from_another_file_is_detected(key):
    h, step = header_len(key), CHUNK + TAG_SIZE
    a = encrypt(os.urandom(2 * CHUNK), key)
    b = encrypt(os.urandom(2 * CHUNK), key)
    with pytest.raises(DecryptionError):
        decrypt(a[: h + step] + b[h + step :], key)


def test_not_an_encrypted_file(key):
    with pytest.raises(DecryptionError, match="magic"):
        decrypt(b"RIFF....WAVE", key)
    with pytest.raises(DecryptionError, match="version"):
        decrypt(MAGIC + bytes([9, 1]) + b"k" + b"\0" * 40, key)


def test_decrypting_never_outputs_unauthenticated_bytes(key):
    blob = bytearray(encrypt(os.urandom(3 * CHUNK), key))
    blob[header_len(key) + 10] ^= 0xFF
    out = io.BytesIO()
    with pytest.raises(DecryptionError):
        decrypt_stream(io.BytesIO(bytes(blob)), out, make_keyring(key))
    assert out.getvalue() == b""


# -- keys ------------------------------------------------------------------------------------

MATERIAL = bytes(range(32))


@pytest.mark.parametrize(
    "content",
    [
        MATERIAL,
        MATERIAL.hex().encode() + b"\n",
        base64.b64encode(MATERIAL) + b"\n",
        base64.urlsafe_b64encode(MATERIAL),
    ],
)
def test_load_key_file_formats(tmp_path: Path, content: bytes):
    path = tmp_path / "k"
    path.write_bytes(content)
    key = load_key(key_file=path)
    assert key.material == MATERIAL
    assert key.key_id == key_id_for(MATERIAL) and len(key.key_id) == 16


def test_load_key_from_env_and_explicit_id(monkeypatch):
    monkeypatch.setenv("CW_TEST_KEY", base64.b64encode(MATERIAL).decode())
    key = load_key(key_env="CW_TEST_KEY", key_id="rec-2026")
    assert (key.key_id, key.material) == ("rec-2026", MATERIAL)


@pytest.mark.parametrize(
    "content", [b"", b"short", os.urandom(31), b"zz" * 32, base64.b64encode(os.urandom(16))]
)
def test_bad_key_files(tmp_path: Path, content: bytes):
    path = tmp_path / "k"
    path.write_bytes(content)
    with pytest.raises(KeyLoadError, match=str(path)):
        load_key(key_file=path)


def test_bad_key_sources(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("CW_NO_SUCH_KEY", raising=False)
    with pytest.raises(KeyLoadError, match="CW_NO_SUCH_KEY"):
        load_key(key_env="CW_NO_SUCH_KEY")
    with pytest.raises(KeyLoadError, match="exactly one"):
        load_key()
    with pytest.raises(KeyLoadError, match="exactly one"):
        load_key(key_file=tmp_path / "k", key_env="X")
    with pytest.raises(KeyLoadError, match="cannot read"):
        load_key(key_file=tmp_path / "missing")
    with pytest.raises(KeyLoadError, match="key id"):
        Key("bad id!", MATERIAL)


def test_key_repr_hides_material():
    key = Key("k1", MATERIAL)
    assert MATERIAL.hex() not in repr(key) and str(list(MATERIAL)) not in repr(key)
    assert "material" not in repr(key)


def test_header_bytes_are_authenticated(key):
    blob = bytearray(encrypt(b"abc" * 100, key))
    struct.pack_into(">I", blob, len(MAGIC) + 2 + len(key.key_id), CHUNK * 2)  # chunk size
    with pytest.raises(DecryptionError):
        decrypt(bytes(blob), key)


@pytest.mark.parametrize("step", [1, 7, CHUNK - 1, CHUNK + TAG_SIZE + 3, 10 * CHUNK])
def test_readers_in_odd_read_sizes(key, step):
    from callwarden.recorder import DecryptingReader, EncryptingReader

    data = os.urandom(3 * CHUNK + 5)
    enc = EncryptingReader(io.BytesIO(data), key, chunk_size=CHUNK)
    blob = b"".join(iter(lambda: enc.read(step), b""))
    dec = DecryptingReader(io.BytesIO(blob), make_keyring(key))
    assert b"".join(iter(lambda: dec.read(step), b"")) == data
    assert dec.read(step) == b"" and enc.read() == b""
