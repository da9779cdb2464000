"""Mutations of a valid knee radiograph file, for fuzzing the decoder and the C-STORE path.

A mutation is drawn as a few small edits (so that a failing case prints readably) and applied to the dataset part
of the file; the file meta stays intact, so a C-STORE SCU can still send the mutated bytes as they are.
"""

from __future__ import annotations

import struct

from hypothesis import strategies as st

Edit = tuple[str, float, bytes]  # (kind, where in the dataset as a fraction, payload)

edits = st.lists(st.tuples(
    st.sampled_from(["truncate", "flip", "splice", "length"]),
    st.floats(0, 1, exclude_max=True),
    st.one_of(st.binary(min_size=1, max_size=16),
              st.sampled_from([struct.pack("<I", v) for v in (0, 1, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF)])),
), min_size=1, max_size=3)


def meta_end(data: bytes) -> int:
    """Offset of the first byte after the file meta group (preamble, 'DICM', group 0002)."""
    (length,) = struct.unpack_from("<I", data, 128 + 4 + 8)  # the (0002,0000) group length value
    return 128 + 4 + 12 + length


def apply(original: bytes, changes: list[Edit]) -> bytes:
    """Truncation, bit flips, spliced bytes, or an element length overwritten (the classic way to make a
    parser read past the end or allocate absurdly)."""
    start = meta_end(original)
    data = bytearray(original)
    for kind, where, payload in changes:
        position = start + int(where * (len(data) - start))
        if kind == "truncate":
            del data[max(position, start + 1):]
        elif kind == "flip":
            data[position] ^= 1 << (payload[0] % 8)
        elif kind == "splice":
            data[position:position + len(payload)] = payload
        else:
            data[position:position + 4] = payload[:4].ljust(4, b"\xff")
    return bytes(data)
