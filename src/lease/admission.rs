//! What a stranger can make the provider store, compute or send before paying: bounded here. Requests
//! that cannot move money (status, garbage, refusals found offline) are answered without a journal record,
//! de-duplicated in a bounded memory, and their error replies are rate-limited per requester; one requester
//! has at most a few paid sagas in flight.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;

/// Request ids answered without a journal record, remembered so that the same event from several relays
/// (or replayed within the acceptance window) is answered once.
const SEEN_CAPACITY: usize = 16_384;
/// Error replies one requester gets per window; beyond that, errors go unanswered (they cost a signature
/// and a relay write each).
pub const ERROR_REPLIES_PER_WINDOW: u32 = 10;
pub const ERROR_WINDOW_SECS: u64 = 60;
/// Error replies to everyone together per window: keys are free, so a flood from fresh keys is bounded
/// here rather than per key.
pub const ERROR_REPLIES_TOTAL_PER_WINDOW: u32 = 600;
/// Requesters tracked by the error-reply limiter; beyond it new requesters are limited outright until
/// windows expire (a flood of fresh keys must not grow this map).
const LIMITER_CAPACITY: usize = 10_000;
/// Journaled sagas one requester may have in flight at once.
pub const MAX_INFLIGHT_PER_REQUESTER: usize = 4;

/// A set of recent ids, oldest forgotten first.
#[derive(Default)]
struct Seen {
    order: VecDeque<String>,
    ids: HashSet<String>,
}

impl Seen {
    /// True if `id` is new (and remembers it).
    fn insert(&mut self, id: &str) -> bool {
        if self.ids.contains(id) {
            return false;
        }
        if self.order.len() >= SEEN_CAPACITY {
            if let Some(old) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
        self.order.push_back(id.to_string());
        self.ids.insert(id.to_string());
        true
    }
}

/// What an error reply to one requester may be now (see [`Admission::error_reply`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorReply {
    Send,
    /// Tell them to slow down instead: answers resume at `until` (unix seconds).
    SlowDown {
        until: u64,
    },
    Withhold,
}

#[derive(Default)]
pub struct Admission {
    seen: Mutex<Seen>,
    /// requester → (window start, error replies sent in it)
    errors: Mutex<HashMap<String, (u64, u32)>>,
    /// (window start, error replies sent in it) over all requesters.
    all_errors: Mutex<(u64, u32)>,
    inflight: Mutex<HashMap<String, usize>>,
}

impl Admission {
    /// First sighting of an unjournaled request id.
    pub fn first_sighting(&self, request_id: &str) -> bool {
        self.seen.lock().map(|mut s| s.insert(request_id)).unwrap_or(false)
    }

    /// What to send a requester whose request is refused: the refusal while under the limits; once per
    /// window, the first refusal past the key's limit becomes a "slow down" (so the sender learns why the
    /// answers stop, rather than taking silence for a provider that is offline); then nothing.
    pub fn error_reply(&self, requester: &str, now: u64) -> ErrorReply {
        let Ok(mut m) = self.errors.lock() else { return ErrorReply::Withhold };
        if m.len() >= LIMITER_CAPACITY && !m.contains_key(requester) {
            m.retain(|_, (start, _)| start.saturating_add(ERROR_WINDOW_SECS) > now);
            if m.len() >= LIMITER_CAPACITY {
                return ErrorReply::Withhold;
            }
        }
        let entry = m.entry(requester.to_string()).or_insert((now, 0));
        if entry.0.saturating_add(ERROR_WINDOW_SECS) <= now {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
        let verdict = match entry.1 {
            n if n <= ERROR_REPLIES_PER_WINDOW => ErrorReply::Send,
            n if n == ERROR_REPLIES_PER_WINDOW + 1 => ErrorReply::SlowDown { until: entry.0 + ERROR_WINDOW_SECS },
            _ => return ErrorReply::Withhold,
        };
        let Ok(mut all) = self.all_errors.lock() else { return ErrorReply::Withhold };
        if all.0.saturating_add(ERROR_WINDOW_SECS) <= now {
            *all = (now, 0);
        }
        all.1 += 1;
        if all.1 <= ERROR_REPLIES_TOTAL_PER_WINDOW {
            verdict
        } else {
            ErrorReply::Withhold
        }
    }

    /// Take one of the requester's in-flight slots; None when all are taken.
    pub fn enter(&self, requester: &str) -> Option<()> {
        let mut m = self.inflight.lock().ok()?;
        let n = m.entry(requester.to_string()).or_insert(0);
        if *n >= MAX_INFLIGHT_PER_REQUESTER {
            return None;
        }
        *n += 1;
        Some(())
    }

    pub fn leave(&self, requester: &str) {
        if let Ok(mut m) = self.inflight.lock() {
            if let Some(n) = m.get_mut(requester) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    m.remove(requester);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_ids_are_answered_once_and_memory_is_bounded() {
        let a = Admission::default();
        assert!(a.first_sighting("x"));
        assert!(!a.first_sighting("x"));
        for i in 0..SEEN_CAPACITY + 10 {
            a.first_sighting(&format!("id{i}"));
        }
        let seen = a.seen.lock().unwrap();
        assert_eq!(seen.order.len(), SEEN_CAPACITY);
        assert_eq!(seen.ids.len(), SEEN_CAPACITY);
    }

    #[test]
    fn error_replies_are_limited_per_requester_and_window() {
        let a = Admission::default();
        let sent = (0..50).filter(|_| a.error_reply("mallory", 1000) == ErrorReply::Send).count();
        assert_eq!(sent as u32, ERROR_REPLIES_PER_WINDOW);
        assert_eq!(a.error_reply("alice", 1000), ErrorReply::Send, "others are not affected");
        assert_eq!(a.error_reply("mallory", 1000 + ERROR_WINDOW_SECS), ErrorReply::Send, "a new window");
        // A flood of fresh keys neither grows the map beyond its bound nor gets more than the total.
        let sent =
            (0..LIMITER_CAPACITY + 100).filter(|i| a.error_reply(&format!("k{i}"), 2000) == ErrorReply::Send).count();
        assert!(a.errors.lock().unwrap().len() <= LIMITER_CAPACITY);
        assert_eq!(sent as u32, ERROR_REPLIES_TOTAL_PER_WINDOW);
    }

    #[test]
    fn the_first_refusal_past_the_limit_says_slow_down_once_a_window() {
        let a = Admission::default();
        let verdicts: Vec<ErrorReply> = (0..20).map(|_| a.error_reply("mallory", 1000)).collect();
        assert!(verdicts[..ERROR_REPLIES_PER_WINDOW as usize].iter().all(|v| *v == ErrorReply::Send));
        assert_eq!(
            verdicts[ERROR_REPLIES_PER_WINDOW as usize],
            ErrorReply::SlowDown { until: 1000 + ERROR_WINDOW_SECS }
        );
        assert!(verdicts[ERROR_REPLIES_PER_WINDOW as usize + 1..].iter().all(|v| *v == ErrorReply::Withhold));
        assert_eq!(a.error_reply("mallory", 1000 + ERROR_WINDOW_SECS), ErrorReply::Send, "a new window");
    }

    #[test]
    fn in_flight_sagas_are_bounded_per_requester() {
        let a = Admission::default();
        for _ in 0..MAX_INFLIGHT_PER_REQUESTER {
            assert!(a.enter("mallory").is_some());
        }
        assert!(a.enter("mallory").is_none());
        assert!(a.enter("alice").is_some());
        a.leave("mallory");
        assert!(a.enter("mallory").is_some());
    }
}
