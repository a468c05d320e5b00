//! Gift wraps already opened, remembered so that a relay's replay (after a reconnect or a notification
//! overflow, of a window that NIP-59's back-dating makes days wide) is not decrypted and decoded again.

use std::collections::{HashSet, VecDeque};

use nostr_sdk::prelude::EventId;

/// Wrap ids remembered; the oldest are forgotten first (a forgotten replay is only decoded again: the
/// lease logic de-duplicates requests by id).
pub const SEEN_WRAPS: usize = 32_768;

#[derive(Default)]
pub struct SeenWraps {
    order: VecDeque<EventId>,
    ids: HashSet<EventId>,
}

impl SeenWraps {
    /// True the first time `id` is offered (and remembers it).
    pub fn first(&mut self, id: EventId) -> bool {
        if !self.ids.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > SEEN_WRAPS {
            if let Some(old) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrap_is_opened_once_and_memory_is_bounded() {
        let mut s = SeenWraps::default();
        let id = |i: u32| {
            EventId::from_byte_array({
                let mut b = [0u8; 32];
                b[..4].copy_from_slice(&i.to_be_bytes());
                b
            })
        };
        assert!(s.first(id(0)));
        assert!(!s.first(id(0)));
        for i in 1..=SEEN_WRAPS as u32 {
            assert!(s.first(id(i)));
        }
        assert_eq!((s.order.len(), s.ids.len()), (SEEN_WRAPS, SEEN_WRAPS));
        assert!(s.first(id(0)), "the oldest was forgotten");
    }
}
