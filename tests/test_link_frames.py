"""The link frames its own text messages (pi_agent/net/link.py): what it writes is what
websockets' own parser reads back, at every length encoding, masked with a fresh key."""

from __future__ import annotations

import os

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from pi_agent.net.link import MASK_POOL, _Masks, text_frame


def parse(data: bytes) -> Frame:
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    parser = Frame.parse(reader.read_exact, mask=True)
    try:
        while True:
            next(parser)
    except StopIteration as done:
        frame: Frame = done.value
    return frame


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 854, 65535, 65536, 70000])
def test_a_text_frame_reads_back_whole_at_every_length(size: int) -> None:
    payload = os.urandom(size)
    key = b"\x9a\x01\xff\x10"
    data = text_frame(payload, key)
    frame = parse(data)
    assert frame.opcode is Opcode.TEXT and frame.fin and frame.data == payload
    assert data[1] & 0x80  # masked, as a client must
    # The key follows the length, and every payload byte goes out XORed with it (RFC 6455 5.3).
    # (Was "the payload is not in the frame": a 1-byte payload equal to a byte of the header or
    # the key is, by chance: 1 failure in a fresh root's run.)
    assert data[-size - 4 : len(data) - size] == key
    assert data[len(data) - size :] == bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def test_every_frame_gets_a_new_key_across_refills() -> None:
    masks = _Masks()
    keys = [masks.next() for _ in range(3 * MASK_POOL // 4 + 5)]
    assert all(len(k) == 4 for k in keys)
    assert len(set(keys)) > len(keys) * 0.99  # 32-bit random keys: a repeat is rare
