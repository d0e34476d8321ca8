"""The Open Inference Protocol's gRPC messages and service, generated from grpc_service.proto by
regenerate.sh (do not edit the *_pb2* modules by hand)."""
