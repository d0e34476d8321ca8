"""grpc_service.proto: the committed modules are generated from it; it is Triton's on the wire."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from google.protobuf.descriptor import Descriptor, EnumDescriptor
from tritonclient.grpc import model_config_pb2, service_pb2

from kiln.serve.proto import grpc_service_pb2 as pb

PROTO = Path(pb.__file__).parent
GENERATED = ("grpc_service_pb2.py", "grpc_service_pb2.pyi", "grpc_service_pb2_grpc.py")
DESCRIPTOR_BYTES = re.compile(r"AddSerializedFile\((b'.*?')\)", re.DOTALL)


def triton(name: str) -> Descriptor | EnumDescriptor:
    """Triton's message or enum of that (top-level) name."""
    for module in (service_pb2, model_config_pb2):
        found = (module.DESCRIPTOR.message_types_by_name.get(name)
                 or module.DESCRIPTOR.enum_types_by_name.get(name))
        if found is not None:
            return found
    raise AssertionError(f"Triton has no {name}")


def same_wire(ours: Descriptor, theirs: Descriptor) -> list[str]:
    """Where ``ours`` differs from ``theirs`` on the wire: each of our fields must be theirs with
    the same number, type and cardinality (and nested messages and enums likewise)."""
    problems = []
    for field in ours.fields:
        other = theirs.fields_by_name.get(field.name)
        where = f"{ours.full_name}.{field.name}"
        if other is None:
            problems.append(f"{where}: not in Triton's {theirs.full_name}")
            continue
        if (field.number, field.type, field.is_repeated) != (
                other.number, other.type, other.is_repeated):
            problems.append(f"{where}: number/type/repeated {field.number}/{field.type}/"
                            f"{field.is_repeated}, Triton's {other.number}/{other.type}/"
                            f"{other.is_repeated}")
        if field.message_type is not None:
            problems += same_wire(field.message_type, other.message_type)
        if field.enum_type is not None:
            problems += same_enum(field.enum_type, other.enum_type)
    return problems


def same_enum(ours: EnumDescriptor, theirs: EnumDescriptor) -> list[str]:
    mine = {v.name: v.number for v in ours.values}
    return [] if mine.items() <= {v.name: v.number for v in theirs.values}.items() else [
        f"{ours.full_name}: {mine} not a part of Triton's"]


def test_messages_and_enums_are_tritons_on_the_wire() -> None:
    assert pb.DESCRIPTOR.package == service_pb2.DESCRIPTOR.package == "inference"
    problems = []
    for name, message in pb.DESCRIPTOR.message_types_by_name.items():
        problems += same_wire(message, triton(name))
    for name, enum in pb.DESCRIPTOR.enum_types_by_name.items():
        problems += same_enum(enum, triton(name))
    assert problems == []


def test_every_call_is_tritons_with_its_request_and_response() -> None:
    ours = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    theirs = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert ours.full_name == theirs.full_name  # the path every call is sent to
    for method in ours.methods:
        other = theirs.methods_by_name[method.name]
        assert (method.input_type.name, method.output_type.name) == (
            other.input_type.name, other.output_type.name)
        assert not method.client_streaming and not method.server_streaming


def test_a_request_round_trips_between_our_messages_and_tritons() -> None:
    request = pb.ModelInferRequest(model_name="clf", id="7", raw_input_contents=[b"\1\0\0\0x"])
    request.parameters["timeout"].int64_param = 5000
    request.inputs.add(name="text", datatype="BYTES", shape=[1])
    theirs = service_pb2.ModelInferRequest.FromString(request.SerializeToString())
    assert theirs.parameters["timeout"].int64_param == 5000 and theirs.inputs[0].shape == [1]
    assert pb.ModelInferRequest.FromString(theirs.SerializeToString()) == request


def test_our_modules_and_tritons_load_in_one_process() -> None:
    # both define inference.ModelInferRequest, ...: ours live in a descriptor pool of their own
    code = ("from tritonclient.grpc import service_pb2, model_config_pb2\n"
            "from kiln.serve.proto import grpc_service_pb2, grpc_service_pb2_grpc\n"
            "import kiln.serve.grpc_adapter\n")
    done = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_the_committed_modules_are_generated_from_the_proto(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools (a dev-only tool) is not installed: "
                        "pip install 'grpcio-tools>=1.76,<1.81'")
    subprocess.run(["sh", str(PROTO / "regenerate.sh"), str(tmp_path)], check=True, timeout=120,
                   env=dict(os.environ, PYTHON=sys.executable))
    fresh = tmp_path / "kiln" / "serve" / "proto"
    stale = "is out of date: run src/kiln/serve/proto/regenerate.sh"
    # what the proto says, whichever protoc compiled it: the descriptor the module embeds
    module = "grpc_service_pb2.py"
    embedded = [DESCRIPTOR_BYTES.findall((folder / module).read_text())
                for folder in (fresh, PROTO)]
    assert embedded[0] == embedded[1] and len(embedded[0]) == 1, f"{module} {stale}"
    committed = re.search(r"GRPC_GENERATED_VERSION = '(.+)'",
                          (PROTO / "grpc_service_pb2_grpc.py").read_text())
    if committed is not None and committed.group(1) == version("grpcio-tools"):
        for name in GENERATED:  # made by this grpcio-tools: byte for byte
            assert (fresh / name).read_text() == (PROTO / name).read_text(), f"{name} {stale}"
