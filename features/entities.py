"""Entities: the things features describe, each with its join key."""

from feast import Entity, ValueType

origin = Entity(
    name="origin",
    join_keys=["origin"],
    value_type=ValueType.STRING,
    description="Departure airport (FAA code: EWR, JFK, LGA).",
)
carrier = Entity(
    name="carrier",
    join_keys=["carrier"],
    value_type=ValueType.STRING,
    description="Operating airline (two-letter code).",
)
aircraft = Entity(
    name="aircraft",
    join_keys=["tailnum"],
    value_type=ValueType.STRING,
    description="One airframe, by tail number.",
)
route = Entity(
    name="route",
    join_keys=["route"],
    value_type=ValueType.STRING,
    description="Origin and destination airports, as 'EWR-IAH'.",
)

ENTITIES = [origin, carrier, aircraft, route]
