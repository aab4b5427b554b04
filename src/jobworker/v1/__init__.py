"""The service's protocol, ``jobworker.v1`` (proto/jobworker/v1/jobworker.proto).

``jobworker_pb2`` (messages), ``jobworker_pb2.pyi`` (their types) and ``jobworker_grpc``
(grpclib's service base and stub) are made by ``scripts/gen-proto`` and committed, so that
installing needs no protoc; ``scripts/check`` fails if they differ from what the .proto
makes.
"""
