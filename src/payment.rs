//! payment adapter: see ARCHITECTURE.md.
