"""The KServe v2 gRPC messages (package ``inference``), built at import from a table.

No generated code: the descriptors are assembled here and given to a private descriptor
pool, so any protobuf runtime from 4.25 on works and nothing depends on the ``protoc``
that would have generated them. What makes a message compatible with other v2 clients
and servers (Triton's, KServe's) is its field numbers and types, which follow the
protocol's definition; the service is ``inference.GRPCInferenceService``.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

__all__ = ["SERVICE", "messages"]

SERVICE = "inference.GRPCInferenceService"
_PACKAGE = "inference"
_F = descriptor_pb2.FieldDescriptorProto
_SCALARS = {"bool": _F.TYPE_BOOL, "string": _F.TYPE_STRING, "bytes": _F.TYPE_BYTES,
            "int32": _F.TYPE_INT32, "int64": _F.TYPE_INT64, "uint32": _F.TYPE_UINT32,
            "uint64": _F.TYPE_UINT64, "float": _F.TYPE_FLOAT, "double": _F.TYPE_DOUBLE}

# message -> fields (name, number, type); "[]type" is repeated, "{}Message" a
# map<string, Message>, a capitalised type a message of this package, "|" a oneof member
_TENSOR = [("name", 1, "string"), ("datatype", 2, "string"), ("shape", 3, "[]int64"),
           ("parameters", 4, "{}InferParameter"), ("contents", 5, "InferTensorContents")]
_TABLE: dict[str, list[tuple[str, int, str]]] = {
    "ServerLiveRequest": [],
    "ServerLiveResponse": [("live", 1, "bool")],
    "ServerReadyRequest": [],
    "ServerReadyResponse": [("ready", 1, "bool")],
    "ModelReadyRequest": [("name", 1, "string"), ("version", 2, "string")],
    "ModelReadyResponse": [("ready", 1, "bool")],
    "ServerMetadataRequest": [],
    "ServerMetadataResponse": [("name", 1, "string"), ("version", 2, "string"),
                               ("extensions", 3, "[]string")],
    "ModelMetadataRequest": [("name", 1, "string"), ("version", 2, "string")],
    "TensorMetadata": [("name", 1, "string"), ("datatype", 2, "string"),
                       ("shape", 3, "[]int64")],
    "ModelMetadataResponse": [("name", 1, "string"), ("versions", 2, "[]string"),
                              ("platform", 3, "string"), ("inputs", 4, "[]TensorMetadata"),
                              ("outputs", 5, "[]TensorMetadata")],
    "InferParameter": [("bool_param", 1, "|bool"), ("int64_param", 2, "|int64"),
                       ("string_param", 3, "|string"), ("double_param", 4, "|double"),
                       ("uint64_param", 5, "|uint64")],
    "InferTensorContents": [("bool_contents", 1, "[]bool"), ("int_contents", 2, "[]int32"),
                            ("int64_contents", 3, "[]int64"), ("uint_contents", 4, "[]uint32"),
                            ("uint64_contents", 5, "[]uint64"),
                            ("fp32_contents", 6, "[]float"), ("fp64_contents", 7, "[]double"),
                            ("bytes_contents", 8, "[]bytes")],
    "InferInputTensor": _TENSOR,
    "InferRequestedOutputTensor": [("name", 1, "string"),
                                   ("parameters", 2, "{}InferParameter")],
    "ModelInferRequest": [("model_name", 1, "string"), ("model_version", 2, "string"),
                          ("id", 3, "string"), ("parameters", 4, "{}InferParameter"),
                          ("inputs", 5, "[]InferInputTensor"),
                          ("outputs", 6, "[]InferRequestedOutputTensor"),
                          ("raw_input_contents", 7, "[]bytes")],
    "InferOutputTensor": _TENSOR,
    "ModelInferResponse": [("model_name", 1, "string"), ("model_version", 2, "string"),
                           ("id", 3, "string"), ("parameters", 4, "{}InferParameter"),
                           ("outputs", 5, "[]InferOutputTensor"),
                           ("raw_output_contents", 6, "[]bytes")],
}


def _field(msg: descriptor_pb2.DescriptorProto, name: str, number: int, kind: str) -> None:
    f = msg.field.add(name=name, number=number, label=_F.LABEL_OPTIONAL)
    if kind.startswith("|"):
        if not msg.oneof_decl:
            msg.oneof_decl.add(name="parameter_choice")
        f.oneof_index = 0
        kind = kind[1:]
    if kind.startswith("{}"):  # map<string, V>: a repeated nested *Entry message
        entry = msg.nested_type.add(name=f"{name.title().replace('_', '')}Entry")
        entry.options.map_entry = True
        _field(entry, "key", 1, "string")
        _field(entry, "value", 2, kind[2:])
        f.label, f.type = _F.LABEL_REPEATED, _F.TYPE_MESSAGE
        f.type_name = f".{_PACKAGE}.{msg.name}.{entry.name}"
        return
    if kind.startswith("[]"):
        f.label, kind = _F.LABEL_REPEATED, kind[2:]
    if kind in _SCALARS:
        f.type = _SCALARS[kind]
    else:
        f.type, f.type_name = _F.TYPE_MESSAGE, f".{_PACKAGE}.{kind}"


def _build() -> dict[str, Any]:
    file = descriptor_pb2.FileDescriptorProto(name="edgefleet_v2_inference.proto",
                                              package=_PACKAGE, syntax="proto3")
    for name, fields in _TABLE.items():
        msg = file.message_type.add(name=name)
        for field in fields:
            _field(msg, *field)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(
        f"{_PACKAGE}.{name}")) for name in _TABLE}


_CLASSES: dict[str, Any] | None = None


def messages() -> dict[str, Any]:
    """Message classes by name (``ModelInferRequest``…), built once."""
    global _CLASSES
    if _CLASSES is None:
        _CLASSES = _build()
    return _CLASSES
