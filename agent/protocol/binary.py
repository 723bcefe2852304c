"""The OIP v2 binary tensor data extension, as Triton's and KServe's HTTP clients speak it.

A body whose ``Inference-Header-Content-Length`` header says N holds an N-byte JSON
inference header, then the raw little-endian bytes of each input whose
``parameters.binary_data_size`` gives their length, in the order the inputs are listed.
Outputs go back the same way when asked (``parameters.binary_data_output`` on the request,
or ``binary_data`` on a requested output): JSON cannot carry 110 KB of pixels without costing
more than the model that reads them.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from agent.decimal_text import decimal
from agent.protocol import dtypes, oip
from agent.protocol.errors import ErrorCode, ProtocolError
from agent.protocol.limits import Limits
from agent.protocol.messages import InferReply
from agent.protocol.oip import reply_document

HEADER = "Inference-Header-Content-Length"
OCTET_STREAM = "application/octet-stream"


class BinaryPart:
    """The bytes after the JSON header, handed out to the inputs in order."""

    def __init__(self, data: memoryview) -> None:
        self._data = data
        self._offset = 0

    def take(self, name: str, size: int) -> memoryview:
        """The next ``size`` bytes, for input ``name``."""
        end = self._offset + size
        if end > len(self._data):
            raise ProtocolError(ErrorCode.SHAPE_MISMATCH, f"input {name!r}: binary_data_size {size} runs past the"
                                f" end of the body ({len(self._data) - self._offset} binary bytes left)")
        chunk = self._data[self._offset:end]
        self._offset = end
        return chunk

    def check_used(self) -> None:
        """Every binary byte belongs to an input: bytes left over mean the header and the data disagree."""
        if self._offset != len(self._data):
            raise ProtocolError(ErrorCode.SHAPE_MISMATCH, f"the body has {len(self._data) - self._offset} binary bytes"
                                " that no input's binary_data_size accounts for")


def split_body(body: bytes, header_length: str | None, limits: Limits) -> tuple[dict[str, Any], BinaryPart | None]:
    """The JSON inference header of a body and its binary part (None for a plain JSON body)."""
    if header_length is None:
        return oip.parse_body(body, limits), None
    size = decimal(header_length.strip())
    if size is None or not 0 < size <= len(body):
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"{HEADER} must be the JSON header's length in bytes, 1 to the"
                            f" body's {len(body)}; got {header_length[:40]!r}")
    return oip.parse_body(body[:size], limits), BinaryPart(memoryview(body)[size:])


def binary_outputs(doc: dict[str, Any], served: list[str]) -> dict[str, bool]:
    """The outputs to answer with, each mapped to whether it goes back as binary data.

    No ``outputs`` list means every served output; ``parameters.binary_data_output`` sets the
    default a requested output's own ``binary_data`` overrides.
    """
    params = doc.get("parameters") or {}
    default = params.get("binary_data_output", False) if isinstance(params, dict) else False
    if not isinstance(default, bool):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "parameters.binary_data_output must be true or false")
    requested = doc.get("outputs")
    if requested is None:
        return dict.fromkeys(served, default)
    if not isinstance(requested, list) or not requested:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "\"outputs\" must be a non-empty list of {\"name\": ...} objects")
    chosen: dict[str, bool] = {}
    for item in requested:
        name = item.get("name") if isinstance(item, dict) else None
        if name not in served:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"requested output {name!r} is not one of the model's:"
                                f" {', '.join(map(repr, served))}")
        own = (item.get("parameters") or {}).get("binary_data", default)
        if not isinstance(own, bool):
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"output {name!r}: parameters.binary_data must be true or false")
        chosen[name] = own
    return chosen


def encode_reply(reply: InferReply, addressed: tuple[str, str], wanted: dict[str, bool]) -> tuple[bytes, int | None]:
    """The answer's body with only the ``wanted`` outputs, the binary ones as raw bytes after the JSON header.

    Returns (body, JSON header length); the length is None when no output is binary: the body is then plain JSON.
    """
    as_json = {name: array for name, array in reply.outputs.items() if wanted.get(name) is False}
    document = reply_document(replace(reply, outputs=as_json), addressed)
    chunks: list[bytes] = []
    for name, array in reply.outputs.items():
        if wanted.get(name):
            wire = dtypes.of_array(array)
            raw = np.ascontiguousarray(array, dtype=wire.numpy).tobytes()
            document["outputs"].append({"name": name, "shape": list(array.shape), "datatype": wire.oip,
                                        "parameters": {"binary_data_size": len(raw)}})
            chunks.append(raw)
    header = oip.dumps(document)
    if not chunks:
        return header, None
    return header + b"".join(chunks), len(header)
