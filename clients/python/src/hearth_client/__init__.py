"""hearth from Python: a blocking client (:class:`Client`) and an asyncio one (:mod:`hearth_client.aio`).

>>> import hearth_client
>>> hearth_client.ensure_daemon_running()            # doctest: +SKIP
>>> with hearth_client.Client() as client:            # doctest: +SKIP
...     client.ping()

Each channel is one module (:mod:`.status`, :mod:`.pool`, :mod:`.queue`,
:mod:`.blob`, :mod:`.sync`) holding its request builders and answer readers (no I/O), its
blocking client and its asyncio client; :mod:`.events` holds the event
types and streams of the ``status`` channel's ``subscribe``, and
:mod:`.protocol` the framing and the handshake that both transports share.
"""

from . import errors as _errors
from ._channel import DEFAULT
from ._transport import AsyncConnection, Connection
from ._version import __version__
from .blob import BlobClient, Stored
from .client import Client
from .ensure import DaemonIdent, Ensured, ensure_daemon_running, find_daemon_binary
from .errors import *  # noqa: F403 (the error classes are the package's API)
from .events import (
    EVENT_KINDS,
    BlobDeleteEvent,
    BlobGcEvent,
    BlobPutEvent,
    Event,
    EventStream,
    HealthChangedEvent,
    JobStateEvent,
    Lagged,
    Notice,
    PoolBuildEndedEvent,
    PoolBuildStartedEvent,
    PoolReleaseEvent,
    PoolTakeEvent,
    SyncCompactedEvent,
    SyncPeerJoinedEvent,
    SyncPeerLeftEvent,
    SyncRoomClosedEvent,
    SyncRoomOpenedEvent,
    SyncSettingsEditEvent,
    UnknownEvent,
)
from .paths import Paths
from .pool import Lease, PoolClient
from .queue import QueueClient
from .status import StatusClient
from .sync import AsyncSyncDoc, AsyncWatch, Changed, Presence, Snapshot, SyncDoc, Watch, Written, apply_patch

__all__ = [
    "__version__",
    "DEFAULT",
    "Client",
    "Connection",
    "AsyncConnection",
    "Paths",
    "StatusClient",
    "PoolClient",
    "QueueClient",
    "BlobClient",
    "Lease",
    "Stored",
    "SyncDoc",
    "Watch",
    "AsyncSyncDoc",
    "AsyncWatch",
    "Written",
    "Changed",
    "Snapshot",
    "Presence",
    "apply_patch",
    "EventStream",
    "EVENT_KINDS",
    "Event",
    "JobStateEvent",
    "PoolBuildStartedEvent",
    "PoolBuildEndedEvent",
    "PoolTakeEvent",
    "PoolReleaseEvent",
    "BlobPutEvent",
    "BlobDeleteEvent",
    "BlobGcEvent",
    "HealthChangedEvent",
    "SyncRoomOpenedEvent",
    "SyncRoomClosedEvent",
    "SyncPeerJoinedEvent",
    "SyncPeerLeftEvent",
    "SyncCompactedEvent",
    "SyncSettingsEditEvent",
    "UnknownEvent",
    "Lagged",
    "Notice",
    "DaemonIdent",
    "Ensured",
    "ensure_daemon_running",
    "find_daemon_binary",
]
__all__ += _errors.__all__
