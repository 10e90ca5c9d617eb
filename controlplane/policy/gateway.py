"""A gateway: one listener that a group of Envoys serves.

Envoys pick their gateway by ``node.cluster``, so every replica of a gateway gets the same
configuration and several gateways can reuse a port on different hosts.
"""

from __future__ import annotations

import ipaddress
from typing import ClassVar

from pydantic import Field, field_validator

from .common import Hostname, Name, PolicyModel

__all__ = ["Gateway"]


class Gateway(PolicyModel):
    """A listener (address and port) and the host names it answers for."""

    kind: ClassVar[str] = "gateway"

    name: Name
    port: int = Field(ge=1, le=65535, description="TCP port of the listener")
    address: str = Field("0.0.0.0", description="IP address the listener binds")
    hostnames: list[Hostname] = Field(
        default_factory=list,
        description="Host names this gateway answers for; empty means any host",
    )

    @field_validator("address")
    @classmethod
    def _address_is_ip(cls, value: str) -> str:
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address") from None

    @field_validator("hostnames")
    @classmethod
    def _unique_hostnames(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("host names must be unique")
        return value
