"""The gateway: HTTP in, validated and durable on the bus out."""
