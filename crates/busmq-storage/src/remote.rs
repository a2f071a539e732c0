//! A gRPC client of the `busmq-storage` service that implements [`Storage`].
