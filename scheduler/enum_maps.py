"""Explicit, total maps between a domain enum and a wire enum (protobuf's plain ints).

The domain enums (`model.NodeState`, `InstanceCode`, ...) say nothing about wire numbers; each
edge (`convert` for the gRPC contract, `store.codec` for the stored records) writes its mapping
out member by member. An `EnumMap` checks at import that its mapping covers every domain member
and every wire value exactly once, so a member added on either side fails at start-up, not on
the first message that carries it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Generic, TypeVar

D = TypeVar("D", bound=enum.Enum)
W = TypeVar("W", bound=int)  # the wire enum's type (protobuf's `Enum.ValueType`), an int


class EnumMap(Generic[D, W]):
    """domain member <-> wire int, both ways; `wire_name` names the wire enum in errors."""

    __slots__ = ("wire_name", "_to_wire", "_from_wire")

    def __init__(
        self, domain: type[D], wire_name: str, wire_values: Iterable[int], pairs: dict[D, W]
    ) -> None:
        self.wire_name = wire_name
        if set(pairs) != set(domain) or sorted(pairs.values()) != sorted(wire_values):
            raise TypeError(f"{domain.__name__} <-> {wire_name} is not one-to-one: {pairs}")
        self._to_wire = dict(pairs)
        self._from_wire: dict[int, D] = {value: member for member, value in pairs.items()}

    def to_wire(self, member: D) -> W:
        return self._to_wire[member]

    def from_wire(self, value: int) -> D | None:
        """The domain member for `value`, or None if the wire value is unknown (proto3 enums
        are open: a peer may send any int32)."""
        return self._from_wire.get(value)

    def known(self) -> str:
        """The wire values, for an error message: "WAITING=0, RUNNING=1, TERMINATED=2"."""
        return ", ".join(f"{member.name}={value}" for member, value in self._to_wire.items())
