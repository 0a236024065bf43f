"""The control plane: breaker engine, policy store on etcd, gRPC service, CLI."""
