"""The generated protobuf messages and gRPC stubs of the `streamwatch.v1`
contract (proto/streamwatch/v1); regenerate with generate_stubs.py."""
