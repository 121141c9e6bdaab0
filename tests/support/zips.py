"""Zip archives as broken or unusual tools write them."""

from __future__ import annotations

import zipfile


def patch_zip_member(src, dest, member, *, flag_bits=0, compress_type=None):
    """Copy ``src`` to ``dest`` with the header fields of ``member`` changed, as an encrypting zip tool or one
    compressing with Deflate64 would have written them (the data itself is left as it was)."""
    import struct

    data = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as zf:
        local = zf.getinfo(member).header_offset
    central = data.find(b"PK\x01\x02")
    while central >= 0:
        name_len = struct.unpack_from("<H", data, central + 28)[0]
        if data[central + 46 : central + 46 + name_len].decode() == member:
            break
        central = data.find(b"PK\x01\x02", central + 46)
    for offset, flags_at in ((local, 6), (central, 8)):
        struct.pack_into(
            "<H", data, offset + flags_at, struct.unpack_from("<H", data, offset + flags_at)[0] | flag_bits
        )
        if compress_type is not None:
            struct.pack_into("<H", data, offset + flags_at + 2, compress_type)
    dest.write_bytes(bytes(data))
    return dest
