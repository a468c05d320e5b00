//! app adapter: see ARCHITECTURE.md.
