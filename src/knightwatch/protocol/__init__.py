"""The wire contract between the control plane and its agents.

Both sides import this package; neither imports the other. Every message is
a strict pydantic model; everything an agent says about its state travels as
a report signed by its node key, carrying the session nonce the server
issued and a strictly increasing sequence number, so a replayed or forged
report is refused (the Uptane "signed version report" idea).
"""

from knightwatch.protocol.blobstream import (
    BlobChunk,
    BlobEnd,
    BlobStart,
    BlobStreamError,
    BlobStreamReader,
    BlobStreamWriter,
    BlobTarget,
    blob_header,
)
from knightwatch.protocol.messages import (
    MAX_MESSAGE_BYTES,
    Abort,
    Ack,
    AckPhase,
    Commit,
    Hello,
    NodeState,
    Prepare,
    Refused,
    Report,
    Rollback,
    ServerMessage,
    ServiceState,
    ServiceStatus,
    SignedReport,
    parse_server_message,
)
from knightwatch.protocol.reports import (
    NodeKey,
    ReportError,
    load_node_key,
    open_report,
    public_key_from_text,
    public_key_text,
    sign_report,
)

__all__ = [
    "MAX_MESSAGE_BYTES",
    "Abort",
    "Ack",
    "AckPhase",
    "BlobChunk",
    "BlobEnd",
    "BlobStart",
    "BlobStreamError",
    "BlobStreamReader",
    "BlobStreamWriter",
    "BlobTarget",
    "Commit",
    "Hello",
    "NodeKey",
    "NodeState",
    "Prepare",
    "Refused",
    "Report",
    "ReportError",
    "Rollback",
    "ServerMessage",
    "ServiceState",
    "ServiceStatus",
    "SignedReport",
    "blob_header",
    "load_node_key",
    "open_report",
    "parse_server_message",
    "public_key_from_text",
    "public_key_text",
    "sign_report",
]
