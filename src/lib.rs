//! Paygress: sells SSH pods for Cashu ecash over Nostr and publishes each as a Tor onion service from
//! inside the provider. See ARCHITECTURE.md for how the modules fit.

pub mod config;
pub mod metrics;
pub mod protocol;

/// Core: lease logic and the ports it uses.
pub mod lease;

// Adapters: each implements ports of `lease` and imports no other adapter.
pub mod k8s;
pub mod nostr;
pub mod onion;
pub mod payment;
pub mod ssh;
pub mod store;

/// Front end serving health, metrics and (RUN_MODE=http) the REST API.
pub mod http;

/// Assembly: the one place concrete adapters are wired together.
pub mod app;

/// `paygress-cli`, the requester's side (second binary; shares `protocol`).
pub mod cli;
