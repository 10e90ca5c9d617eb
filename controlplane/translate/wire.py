"""Protobuf wire encoding of length-delimited fields, for assembling large messages from
pre-serialised parts.

A RouteConfiguration of 10,000 routes is ~270 KB. Copying 10,000 cached Route messages into
a new message and serialising it costs ~16 ms per change; joining their cached bytes costs
~2 ms. The bytes are identical to deterministic serialisation of the equivalent message
(fields in number order), which a unit test checks.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import Message

__all__ = ["Encoded", "field", "varint"]


def varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def field(number: int, payload: bytes) -> bytes:
    """One length-delimited field (strings, bytes, embedded messages)."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


@dataclass(frozen=True)
class Encoded:
    """A resource already in wire form; ``message()`` decodes it for tests and tools."""

    message_type: type[Message]
    data: bytes

    @property
    def type_url(self) -> str:
        return "type.googleapis.com/" + self.message_type.DESCRIPTOR.full_name

    def message(self) -> Message:
        return self.message_type.FromString(self.data)
