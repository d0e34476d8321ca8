#!/bin/sh
# Regenerate grpc_service_pb2.py, .pyi and grpc_service_pb2_grpc.py from grpc_service.proto.
#
#   src/kiln/serve/proto/regenerate.sh [OUT]     (OUT: the folder holding kiln/, default src/)
#
# Needs grpcio-tools, a development tool only (the generated modules are committed), of a version
# whose protoc matches the protobuf runtime's major version: grpcio-tools 1.80 generates for
# protobuf 6.31+ ("pip install 'grpcio-tools>=1.76,<1.81'"; 1.82 and later generate for protobuf
# 7). $PYTHON picks the interpreter (default: python). tests/serve/test_grpc_proto.py checks that
# the committed modules are what this script makes.
#
# The generated messages go into a descriptor pool of their own, not protobuf's default one:
# Triton's stubs (tritonclient.grpc, which kiln export also imports) put the same names
# (inference.ModelInferRequest, ...) in the default pool, and protobuf refuses a second definition
# of a name there, so either import would break the other in one process. The wire format does
# not carry these names; only the service's (inference.GRPCInferenceService) travels, in the path.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../../.." && pwd)
out=${1:-$src}
mkdir -p "$out/kiln/serve/proto"
"${PYTHON:-python}" -m grpc_tools.protoc -I "$src" --python_out="$out" --pyi_out="$out" \
    --grpc_python_out="$out" "$src/kiln/serve/proto/grpc_service.proto"
module="$out/kiln/serve/proto/grpc_service_pb2.py"
sed 's/^DESCRIPTOR = _descriptor_pool\.Default()\.AddSerializedFile(/DESCRIPTOR = _descriptor_pool.DescriptorPool().AddSerializedFile(/' \
    "$module" > "$module.tmp"
grep -q '_descriptor_pool.DescriptorPool().AddSerializedFile' "$module.tmp" || {
    echo "regenerate.sh: the generated module no longer adds its descriptor as expected" >&2
    rm -f "$module.tmp"
    exit 1
}
mv "$module.tmp" "$module"
