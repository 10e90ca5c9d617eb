"""Stand-ins the ADS stream tests share."""

from __future__ import annotations

from typing import Any

from controlplane.xds.status import ProxyState


class NullRecorder:
    """A :class:`~controlplane.xds.status.StatusRecorder` that records nothing: for tests of
    what a stream sends, not of what it reports."""

    def event(self, *args: Any) -> None:
        pass

    def changed(self, state: ProxyState) -> None:
        pass
