"""How an event's raw request is kept in the database: compressed with a preset dictionary.

A delivery's query string is about 460 bytes, half of the events table. Compressed on its own
it would still take about 270: it is too short to find much to repeat within it. Most of it is
what every delivery has (the field names, `%40sipproxy.telphin.ru`, the form of the ids,
percent-encoded Cyrillic), so the compressor is given a dictionary of deliveries to find it in.

Rows are packed with zstandard (ZSTD): about 122 bytes for a delivery of bench/replay.py, in
1.7 µs, read back in 0.6 µs. Rows of schema versions 12 to 16 were deflated (DEFLATED): 152
bytes, 10 µs to pack, 2.5 µs to read, most of both spent on deflate's code tables, which
zstandard's dictionary carries made once (docs/performance.md). They stay as they are and read
as before.
"""

from __future__ import annotations

import threading
import zlib
from pathlib import Path

import zstandard

# How an events row keeps its raw_query and raw_body (its raw_packing column). An empty one
# stays empty whatever the packing.
AS_RECEIVED = 0  # as they came: the rows of schema versions before 12, and a server of one
DEFLATED = 1  # raw deflate (RFC 1951) with DICTIONARY: schema versions 12 to 16
ZSTD = 2  # a zstandard frame without its magic number, with ZSTD_DICTIONARY: since 17

WINDOW_BITS = 11  # a 2 KiB window: room for the dictionary, and a delivery is shorter still
MEMORY_LEVEL = 2  # small hash tables: a delivery is short, and copying them (below) is cheap
LEVEL = 6  # zlib's default: level 9 makes them no smaller

# The dictionary never changes: the rows packed with it need it to be read. (Another one would
# be another raw_packing value, with the migration that brings it.) It is the last 2,048 bytes
# of the real deliveries in tests/samples, in the order of their file names, each as
# `myid=85219&<its query>&` (tests/test_packing.py makes it again from them): deflate finds
# its matches up to the window's size back, and keeps only that much of a dictionary.
DICTIONARY = (
    b"219&SubCallID=124575-6d5229729eae11e7b0329bafbda23c9a&EventTime=1505985765358033&CalledN"
    b"umber=%2B74953730763&EventType=dial-out&CallerIDNum=3515%2A101&CallerExtensionID=124575&"
    b"CallerExtension=3515%2A101%40sipproxy.telphin.ru&CallFlow=out&CallAPIID=3584709739-6d522"
    b"972-9eae-11e7-b032-9bafbda23c9a&CallerIDName=%D0%98%D0%B2%D0%B0%D0%BD%D0%BE%D0%B2+%D0%98"
    b"%D0%B2%D0%B0%D0%BD+%D0%98%D0%B2%D0%B0%D0%BD%D0%BE%D0%B2%D0%B8%D1%87&CallID=6d5229729eae1"
    b"1e7b0329bafbda23c9a&CallStatus=CALLING&myid=85219&EventType=dial-out&EventTime=150298572"
    b"6958201&CallID=b5187f38a9cc43f2ba068bce983a513e&SubCallID=85219-b5187f38a9cc43f2ba068bce"
    b"983a513e&CallAPIID=3584709739-b5187f38-a9cc-43f2-ba06-8bce983a513e&CallStatus=CALLING&Ca"
    b"llFlow=out&CalledNumber=%2B79161112233&CallerIDNum=2566%2A102&CallerExtensionID=85219&Ca"
    b"llerExtension=2566%2A102%40sipproxy.telphin.ru&CallerIDName=%D0%9F%D1%83%D0%BA%D0%B8%D0%"
    b"BD+%D0%92%D0%B0%D1%81%D0%B8%D1%81%D1%83%D0%B0%D0%BB%D0%B8%D0%B9+%D0%9A%D0%B0%D1%80%D0%BB"
    b"%D0%BE%D0%B2%D0%B8%D1%87&myid=85219&EventType=hangup&EventTime=1502985750238219&CallID=b"
    b"5187f38a9cc43f2ba068bce983a513e&SubCallID=85219-b5187f38a9cc43f2ba068bce983a513e&CallAPI"
    b"ID=3584709739-b5187f38-a9cc-43f2-ba06-8bce983a513e&RecID=10500-100bbbbcccc99aaff44cccc77"
    b"7ddd444&Duration=11420018&CallStatus=ANSWER&CallFlow=out&CalledNumber=%2B79161112233&Cal"
    b"lerIDNum=2566%2A102&CallerExtensionID=85219&CallerExtension=2566%2A102%40sipproxy.telphi"
    b"n.ru&CallerIDName=%D0%9F%D1%83%D0%BA%D0%B8%D0%BD+%D0%92%D0%B0%D1%81%D0%B8%D1%81%D1%83%D0"
    b"%B0%D0%BB%D0%B8%D0%B9+%D0%9A%D0%B0%D1%80%D0%BB%D0%BE%D0%B2%D0%B8%D1%87&myid=85219&EventT"
    b"ype=dial-in&EventTime=1502985686478202&CallID=262077ef325f4868aa49bf22309229f7&SubCallID"
    b"=85219-e6bd7bb2622b424392a012e28473f91a&CallAPIID=3584709739-262077ef-325f-4868-aa49-bf2"
    b"2309229f7&CallFlow=in&CallStatus=CALLING&CalledDID=74959998877&CalledNumber=2566%2A102&C"
    b"alledExtension=2566%2A102%40sipproxy.telphin.ru&CalledExtensionID=85219&CallerIDName=%2B"
    b"79161112233&CallerIDNum=%2B79161112233&CallerExtensionID=96857&CallerExtension=2566%2A88"
    b"7%40sipproxy.telphin.ru&"
)

# Deflate's state with the dictionary taken in, copied for each request: setting the dictionary
# again for each (hashing its 2 KiB) cost more than deflating the request itself.
PACKER = zlib.compressobj(
    LEVEL, zlib.DEFLATED, -WINDOW_BITS, MEMORY_LEVEL, zlib.Z_DEFAULT_STRATEGY, DICTIONARY
)
UNPACKER = zlib.decompressobj(-WINDOW_BITS, DICTIONARY)


def deflate(data: bytes) -> bytes:
    """Bytes as a DEFLATED row keeps them (what rows of schema versions 12 to 16 hold)."""
    if not data:
        return b""
    packer = PACKER.copy()
    return packer.compress(data) + packer.flush()


# zstandard's dictionary, which never changes either: `zstandard.train_dictionary(2048, ...)`
# over 20,000 deliveries made by pbx_emulator/simulate.py (tests/test_packing.py says which,
# checks its hash, and makes it again with the zstd release it was trained with). Trained, it
# holds the deliveries' common strings and its entropy tables.
ZSTD_DICTIONARY = zstandard.ZstdCompressionDict(
    (Path(__file__).parent / "packing.zdict").read_bytes(), dict_type=zstandard.DICT_TYPE_FULLDICT
)
MAGICLESS = zstandard.FORMAT_ZSTD1_MAGICLESS
BLOBS = (bytes, bytearray, memoryview)  # what a stored raw request may come as
ZSTD_LEVEL = 3  # zstandard's default: higher levels take five times as long for 4% less
ZSTD_FRAMES = zstandard.ZstdCompressionParameters.from_level(
    ZSTD_LEVEL,
    format=MAGICLESS,  # 4 bytes a row less: the column says what it is
    write_checksum=0,  # a cut frame does not unpack all the same (its size is written)
    write_content_size=1,
    write_dict_id=0,
)
ZSTD_DICTIONARY.precompute_compress(compression_params=ZSTD_FRAMES)


class Coders(threading.local):
    """A compressor and a decompressor for each thread: neither may be used by two at once."""

    def __init__(self) -> None:
        self.packer = zstandard.ZstdCompressor(
            dict_data=ZSTD_DICTIONARY, compression_params=ZSTD_FRAMES
        )
        self.unpacker = zstandard.ZstdDecompressor(dict_data=ZSTD_DICTIONARY, format=MAGICLESS)


CODERS = Coders()


def pack(data: bytes) -> bytes:
    """Bytes as a row keeps them now (ZSTD)."""
    if not data:
        return b""
    return CODERS.packer.compress(data)


def unpack(data: bytes, packing: int) -> bytes:
    """Bytes as received, from a row's raw_query or raw_body and its raw_packing. Raises
    TypeError or ValueError where they are not what a receiver stores (a damaged file)."""
    if not isinstance(data, BLOBS):
        raise TypeError(f"a stored raw request is {type(data).__name__}, not bytes")
    if packing == AS_RECEIVED or not data:
        return bytes(data)
    if packing == ZSTD:
        try:  # a damaged frame may say it holds up to 2**64 bytes, more than memory takes
            return CODERS.unpacker.decompress(data)
        except (zstandard.ZstdError, MemoryError):
            damaged = "a stored raw request does not unpack: the database is damaged"
            raise ValueError(damaged) from None
    if packing != DEFLATED:
        raise ValueError(f"raw_packing {packing} is not known to this receiver: upgrade receiver")
    damaged = "a stored raw request does not inflate: the database is damaged"
    unpacker = UNPACKER.copy()
    try:
        out = unpacker.decompress(data)
    except zlib.error:
        raise ValueError(damaged) from None
    if not unpacker.eof or unpacker.unused_data:
        raise ValueError(damaged)
    return out
