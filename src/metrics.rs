//! Process metrics, rendered in the Prometheus text format by the http module.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Upper bounds (seconds) of the request→reply histogram.
const LATENCY_BUCKETS: [f64; 13] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0];

#[derive(Default)]
pub struct Metrics {
    /// Requests by outcome code (`ok`, `extended`, `status`, or an error code).
    outcomes: Mutex<BTreeMap<String, u64>>,
    pub sats_received: AtomicU64,
    pub sats_refunded: AtomicU64,
    pub live_leases: AtomicU64,
    pub onion_running: AtomicU64,
    pub onion_failed: AtomicU64,
    /// Onion services relaunched because they stalled unpublished (copied from the adapter).
    pub onion_relaunches: AtomicU64,
    /// Pool slots published and waiting for a lease.
    pub onion_pool_ready: AtomicU64,
    pub connected_relays: AtomicU64,
    latency: Mutex<Histogram>,
}

#[derive(Default)]
struct Histogram {
    buckets: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Metrics {
    pub fn outcome(&self, code: &str) {
        if let Ok(mut m) = self.outcomes.lock() {
            *m.entry(code.to_string()).or_default() += 1;
        }
    }

    pub fn observe_reply_latency(&self, seconds: f64) {
        if let Ok(mut h) = self.latency.lock() {
            for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
                if seconds <= *le {
                    h.buckets[i] += 1;
                }
            }
            h.count += 1;
            h.sum += seconds;
        }
    }

    pub fn outcome_count(&self, code: &str) -> u64 {
        self.outcomes.lock().map(|m| m.get(code).copied().unwrap_or(0)).unwrap_or(0)
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        let g = |s: &mut String, name: &str, help: &str, kind: &str, v: u64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        let _ = writeln!(s, "# HELP paygress_requests_total Requests by outcome code.");
        let _ = writeln!(s, "# TYPE paygress_requests_total counter");
        if let Ok(m) = self.outcomes.lock() {
            for (code, n) in m.iter() {
                let _ = writeln!(s, "paygress_requests_total{{outcome=\"{code}\"}} {n}");
            }
        }
        g(
            &mut s,
            "paygress_sats_received_total",
            "Sats received after mint fees.",
            "counter",
            self.sats_received.load(Ordering::Relaxed),
        );
        g(
            &mut s,
            "paygress_sats_refunded_total",
            "Sats returned as refund tokens.",
            "counter",
            self.sats_refunded.load(Ordering::Relaxed),
        );
        g(
            &mut s,
            "paygress_live_leases",
            "Leases whose pod exists and has not expired.",
            "gauge",
            self.live_leases.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            s,
            "# HELP paygress_onion_services Onion services by status.\n# TYPE paygress_onion_services gauge"
        );
        let _ =
            writeln!(s, "paygress_onion_services{{status=\"running\"}} {}", self.onion_running.load(Ordering::Relaxed));
        let _ =
            writeln!(s, "paygress_onion_services{{status=\"failed\"}} {}", self.onion_failed.load(Ordering::Relaxed));
        let _ = writeln!(
            s,
            "paygress_onion_services{{status=\"pooled\"}} {}",
            self.onion_pool_ready.load(Ordering::Relaxed)
        );
        g(
            &mut s,
            "paygress_onion_relaunches_total",
            "Onion services stopped and launched again with the same key because they stalled unpublished.",
            "counter",
            self.onion_relaunches.load(Ordering::Relaxed),
        );
        g(
            &mut s,
            "paygress_connected_relays",
            "Nostr relays currently connected.",
            "gauge",
            self.connected_relays.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            s,
            "# HELP paygress_reply_seconds Time from request to reply.\n# TYPE paygress_reply_seconds histogram"
        );
        if let Ok(h) = self.latency.lock() {
            for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
                let _ = writeln!(s, "paygress_reply_seconds_bucket{{le=\"{le}\"}} {}", h.buckets[i]);
            }
            let _ = writeln!(s, "paygress_reply_seconds_bucket{{le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(s, "paygress_reply_seconds_sum {}", h.sum);
            let _ = writeln!(s, "paygress_reply_seconds_count {}", h.count);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histogram() {
        let m = Metrics::default();
        m.outcome("ok");
        m.outcome("token_spent");
        m.outcome("ok");
        m.observe_reply_latency(1.5);
        m.sats_received.fetch_add(100, Ordering::Relaxed);
        let t = m.render();
        assert!(t.contains("paygress_requests_total{outcome=\"ok\"} 2"));
        assert!(t.contains("paygress_requests_total{outcome=\"token_spent\"} 1"));
        assert!(t.contains("paygress_sats_received_total 100"));
        assert!(t.contains("paygress_reply_seconds_bucket{le=\"1\"} 0"));
        assert!(t.contains("paygress_reply_seconds_bucket{le=\"2\"} 1"));
        assert!(t.contains("paygress_reply_seconds_count 1"));
    }

    #[test]
    fn sub_second_replies_land_in_sub_second_buckets() {
        let m = Metrics::default();
        m.observe_reply_latency(0.08);
        let t = m.render();
        assert!(t.contains("paygress_reply_seconds_bucket{le=\"0.05\"} 0"), "{t}");
        assert!(t.contains("paygress_reply_seconds_bucket{le=\"0.1\"} 1"), "{t}");
    }
}
