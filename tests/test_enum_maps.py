"""Every domain enum crosses each edge through an explicit, one-to-one map."""

from __future__ import annotations

import enum

import pytest

from scheduler import convert
from scheduler.enum_maps import EnumMap
from scheduler.model import InstanceCode, NodeEventKind, NodeState, Signal, WorkloadType
from scheduler.store import codec

MAPS = {
    name: value
    for module in (convert, codec)
    for name, value in vars(module).items()
    if isinstance(value, EnumMap)
}


def test_each_domain_enum_has_a_map_at_each_edge_that_carries_it():
    domains = {}
    for name, mapping in MAPS.items():
        domains.setdefault(type(next(iter(mapping._to_wire))), []).append(name)
    assert {enum_: len(names) for enum_, names in domains.items()} == {
        InstanceCode: 4,  # agent, controller and node_agent StatusCode; stored
        NodeState: 2,
        NodeEventKind: 2,
        WorkloadType: 3,
        Signal: 1,
    }, domains


@pytest.mark.parametrize("name", sorted(MAPS))
def test_maps_round_trip(name):
    mapping = MAPS[name]
    for member in mapping._to_wire:
        assert mapping.from_wire(mapping.to_wire(member)) is member
    assert mapping.from_wire(99) is None


def test_a_map_that_is_not_one_to_one_fails_at_import():
    class Colour(enum.Enum):
        RED = 0
        BLUE = 1

    with pytest.raises(TypeError, match="not one-to-one"):  # a member left out
        EnumMap(Colour, "Colour", [0, 1], {Colour.RED: 0})
    with pytest.raises(TypeError, match="not one-to-one"):  # a wire value left out
        EnumMap(Colour, "Colour", [0, 1, 2], {Colour.RED: 0, Colour.BLUE: 1})
    with pytest.raises(TypeError, match="not one-to-one"):  # two members on one value
        EnumMap(Colour, "Colour", [0, 1], {Colour.RED: 0, Colour.BLUE: 0})


def test_an_unknown_stored_code_is_a_format_error_naming_the_key():
    from scheduler._proto import store_pb2

    bad = store_pb2.StoredNode(id="n", host="h", port=1, state=7).SerializeToString()
    with pytest.raises(codec.FormatError, match=r"nodes/n.*store.NodeState 7 is unknown"):
        codec.decode_state([("nodes/n", bad)], retained=10)
