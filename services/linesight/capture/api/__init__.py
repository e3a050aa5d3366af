"""Transport for the capture service: gRPC servicer and client, HTTP status route."""
