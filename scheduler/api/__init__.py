"""The gRPC API: one module per service. Handlers validate and convert at the edge
(`convert`), check who is calling, and delegate to the core; they hold no state of their own."""
