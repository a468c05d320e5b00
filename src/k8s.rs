//! k8s adapter: see ARCHITECTURE.md.
