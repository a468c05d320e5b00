//! http adapter: see ARCHITECTURE.md.
