//! nostr adapter: see ARCHITECTURE.md.
