"""What a source adapter declares about itself; `ingest.sources` gathers the declarations into the one
registry that the HTTP routes, the pipeline, the simulator and the docs read."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ingest.signatures import Auth
from trackd.model import Event, SourceContext


@dataclass(frozen=True, slots=True)
class Adapter:
    """One source: `normalize` turns a payload into canonical events (pure: no I/O, no clock).

    `signature` is how its webhook deliveries are authenticated (`ingest.signatures`: an HMAC `Scheme`
    of the body, or a `HeaderSecret`, the ingest secret in a header; None: not a webhook source),
    `status` what a stored delivery is answered with (`status_of`, when given, decides it from the
    payload), `whole` whether a delivery is written in one
    transaction (one event may withdraw another of the same delivery), and `webhook` whether it is
    served at `POST /v1/ingest/{tenant}/{source}`.
    """

    name: str
    normalize: Callable[[bytes, SourceContext], list[Event]]
    signature: Auth | None
    status: int = 202
    status_of: Callable[[bytes], int] | None = None
    whole: bool = False
    webhook: bool = True
