"""Names the cluster agrees on: node ids (SPEC §2.1), instance ids (SPEC §2.2) and SPIFFE trust
domains (SPEC §3).

One rule each, shared by request validation, the PKI and identity checks, so a name that is
valid in a JoinCluster call is also valid in a certificate and the other way round.
"""

from __future__ import annotations

import re

DEFAULT_TRUST_DOMAIN = "orka.local"  # SPEC §4 default of [tls] trust_domain

NODE_ID_RULE = "1-253 characters of a-z, 0-9, '.' and '-' (case-insensitive)"
# Explicit A-Z rather than re.IGNORECASE: with IGNORECASE, [a-z] also matches the Kelvin
# sign and other non-ASCII letters that fold to ASCII.
_NODE_ID = re.compile(r"[A-Za-z0-9.-]{1,253}")

INSTANCE_ID_RULE = "1-253 characters of A-Z, a-z, 0-9, '.', '_' and '-'"
# The Orka Controller names instances `instance-<name>-<uuid>`, and its names may hold `_`.
_INSTANCE_ID = re.compile(r"[A-Za-z0-9._-]{1,253}")

TRUST_DOMAIN_RULE = "1-255 characters of a-z, 0-9, '.', '-' and '_' (SPIFFE trust domain)"
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]{1,255}")


def valid_node_id(text: object) -> bool:
    """True if `text` is a node id (also the rule of controller names)."""
    return isinstance(text, str) and _NODE_ID.fullmatch(text) is not None


def valid_instance_id(text: object) -> bool:
    """True if `text` is an instance id as the Orka Controller makes them."""
    return isinstance(text, str) and _INSTANCE_ID.fullmatch(text) is not None


def valid_trust_domain(text: object) -> bool:
    """True if `text` is a SPIFFE trust domain name (lower case, as SPIFFE requires)."""
    return isinstance(text, str) and _TRUST_DOMAIN.fullmatch(text) is not None
