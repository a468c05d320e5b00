//! ssh adapter: see ARCHITECTURE.md.
