"""connection.frame_size: where a frame ends, read from its first bytes (the pre-auth feed stops there)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode

from guarded_ws.connection import MAX_FRAME_HEADER, frame_size

# Payload sizes that take each length form: 7-bit, 16-bit and 64-bit.
sizes = st.one_of(st.integers(0, 125), st.integers(126, 65535), st.integers(65536, 70000))


@given(st.sampled_from([Opcode.BINARY, Opcode.CONT, Opcode.PING]), sizes, st.booleans())
def test_a_frame_size_is_known_once_its_length_is(opcode: Opcode, size: int, mask: bool) -> None:
    if opcode is Opcode.PING:
        size %= 126  # control frames carry at most 125 bytes
    wire = Frame(opcode, b"x" * size).serialize(mask=mask, extensions=[])
    length_bytes = 2 + (0 if size < 126 else 2 if size < 65536 else 8)
    for cut in range(min(len(wire), MAX_FRAME_HEADER) + 1):
        assert frame_size(wire[:cut]) == (len(wire) if cut >= length_bytes else None)


def test_a_hostile_length_is_read_as_declared() -> None:
    # 2**63 - 1 bytes announced: the size says so; the byte budget, not this, refuses it.
    assert frame_size(b"\x82\xff\x7f" + b"\xff" * 7) == 10 + 4 + 2**63 - 1
