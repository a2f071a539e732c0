//! The `busmq.storage.v1` gRPC service over any [`Storage`].
