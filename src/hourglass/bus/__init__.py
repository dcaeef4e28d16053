"""The bus: NATS JetStream, embedded or external."""
