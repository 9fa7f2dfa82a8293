//! Metrics, systemd readiness and graceful shutdown (issue 6).
