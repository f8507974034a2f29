"""Remote operations: operator keys and the trust store, JWS (EdDSA/Ed25519) envelopes, replay and scope rules
(docs/remote.md). Imports only the shared vocabulary: the core and the tools use it, it uses neither."""
