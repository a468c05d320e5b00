//! store adapter: see ARCHITECTURE.md.
