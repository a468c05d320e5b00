//! onion adapter: see ARCHITECTURE.md.
