//! Running the storage gRPC server.
