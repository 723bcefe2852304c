"""The wire contract: the single source of truth for topic names and payload encoding.

``docs/PROTOCOL.md`` describes it for people; ``cloud`` imports it from here.
"""

from agent.protocol.codec import (
    CONTENT_TYPE_JSON,
    CONTENT_TYPE_TENSORS,
    body_kind,
    decode_reply,
    decode_request,
    encode_reply,
    encode_request,
    reply_topic,
    unanswerable,
)
from agent.protocol.dtypes import SUPPORTED as SUPPORTED_DTYPES
from agent.protocol.errors import ErrorCode, ProtocolError
from agent.protocol.limits import DEFAULT_LIMITS, Limits
from agent.protocol.messages import (
    PRIORITY_DEFAULT,
    PRIORITY_MAX,
    PRIORITY_MIN,
    BodyKind,
    ErrorReply,
    InferReply,
    InferRequest,
    Source,
    new_request_id,
)
from agent.protocol.topics import DEFAULT_PREFIX, DEFAULT_SHARE_GROUP, OFFLINE, ONLINE, Topics

__all__ = [
    "CONTENT_TYPE_JSON",
    "CONTENT_TYPE_TENSORS",
    "DEFAULT_LIMITS",
    "DEFAULT_PREFIX",
    "DEFAULT_SHARE_GROUP",
    "OFFLINE",
    "ONLINE",
    "PRIORITY_DEFAULT",
    "PRIORITY_MAX",
    "PRIORITY_MIN",
    "SUPPORTED_DTYPES",
    "BodyKind",
    "ErrorCode",
    "ErrorReply",
    "InferReply",
    "InferRequest",
    "Limits",
    "ProtocolError",
    "Source",
    "Topics",
    "body_kind",
    "decode_reply",
    "decode_request",
    "encode_reply",
    "encode_request",
    "new_request_id",
    "reply_topic",
    "unanswerable",
]
