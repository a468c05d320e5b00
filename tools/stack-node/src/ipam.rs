//! Pod IP allocation from the node's pod CIDR (all of 127.0.0.0/8 routes to
//! `lo` on Linux, so any address in a loopback CIDR can be bound without setup).
//!
//! Stable per pod uid; freed on deletion and handed out again later. Allocation
//! is next-fit (a cursor walks the range), so a just-freed address is not
//! immediately given to the next pod, which keeps known_hosts confusion in tests
//! to a minimum while still reusing the whole range.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use anyhow::{bail, Context};

#[derive(Debug)]
pub struct Ipam {
    first: u32,
    last: u32,
    cursor: u32,
    by_uid: HashMap<String, Ipv4Addr>,
    by_ip: HashMap<Ipv4Addr, String>,
}

impl Ipam {
    /// `cidr` like "127.0.100.0/24". The network address, the first host
    /// (conventionally the gateway) and the broadcast address are not handed out.
    pub fn new(cidr: &str) -> anyhow::Result<Self> {
        let (addr, len) = cidr.split_once('/').with_context(|| format!("pod CIDR {cidr:?} has no /prefix"))?;
        let addr: Ipv4Addr = addr.parse().with_context(|| format!("pod CIDR {cidr:?}: bad address"))?;
        let len: u32 = len.parse().with_context(|| format!("pod CIDR {cidr:?}: bad prefix length"))?;
        if !(8..=30).contains(&len) {
            bail!("pod CIDR {cidr:?}: prefix length must be between 8 and 30");
        }
        let mask = u32::MAX << (32 - len);
        let network = u32::from(addr) & mask;
        let broadcast = network | !mask;
        let first = network + 2;
        let last = broadcast - 1;
        if first > last {
            bail!("pod CIDR {cidr:?} has no usable addresses");
        }
        Ok(Ipam { first, last, cursor: first, by_uid: HashMap::new(), by_ip: HashMap::new() })
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        (self.first..=self.last).contains(&u32::from(ip))
    }

    /// Record an address a pod already has (from its status). Fails if another
    /// live pod holds it; addresses outside the CIDR are recorded too (the pod
    /// keeps what the API says it has) but never handed out by `allocate`.
    pub fn reserve(&mut self, uid: &str, ip: Ipv4Addr) -> Result<(), String> {
        if let Some(owner) = self.by_ip.get(&ip) {
            if owner != uid {
                return Err(owner.clone());
            }
            return Ok(());
        }
        if let Some(old) = self.by_uid.insert(uid.to_string(), ip) {
            self.by_ip.remove(&old);
        }
        self.by_ip.insert(ip, uid.to_string());
        Ok(())
    }

    /// The pod's address, allocating one if it has none. `None` when the range is full.
    pub fn allocate(&mut self, uid: &str) -> Option<Ipv4Addr> {
        if let Some(ip) = self.by_uid.get(uid) {
            return Some(*ip);
        }
        let size = self.last - self.first + 1;
        for i in 0..size {
            let n = self.first + (self.cursor - self.first + i) % size;
            let ip = Ipv4Addr::from(n);
            if !self.by_ip.contains_key(&ip) {
                self.cursor = if n == self.last { self.first } else { n + 1 };
                self.by_uid.insert(uid.to_string(), ip);
                self.by_ip.insert(ip, uid.to_string());
                return Some(ip);
            }
        }
        None
    }

    pub fn release(&mut self, uid: &str) -> Option<Ipv4Addr> {
        let ip = self.by_uid.remove(uid)?;
        self.by_ip.remove(&ip);
        Some(ip)
    }

    pub fn allocated(&self) -> usize {
        self.by_uid.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_skips_reserved() {
        let mut a = Ipam::new("127.0.100.0/24").unwrap();
        assert_eq!(a.allocate("u1"), Some(ip("127.0.100.2")));
        assert_eq!(a.allocate("u2"), Some(ip("127.0.100.3")));
        assert!(a.contains(ip("127.0.100.254")));
        assert!(!a.contains(ip("127.0.100.255")));
        assert!(!a.contains(ip("127.0.100.1")));
        assert!(!a.contains(ip("127.0.100.0")));
        // Host bits in the CIDR are ignored.
        let mut b = Ipam::new("127.0.100.77/24").unwrap();
        assert_eq!(b.allocate("x"), Some(ip("127.0.100.2")));
    }

    #[test]
    fn bad_cidrs() {
        for c in ["127.0.100.0", "127.0.100.0/33", "127.0.100.0/31", "x/24", "127.0.100.0/x", ""] {
            assert!(Ipam::new(c).is_err(), "{c}");
        }
    }

    #[test]
    fn stable_per_uid() {
        let mut a = Ipam::new("127.0.100.0/24").unwrap();
        let x = a.allocate("u1").unwrap();
        a.allocate("u2").unwrap();
        assert_eq!(a.allocate("u1"), Some(x));
        assert_eq!(a.allocated(), 2);
    }

    #[test]
    fn reuse_after_release_and_exhaustion() {
        // /29: network .0, gateway .1, broadcast .7 → .2..=.6 usable (5 addresses).
        let mut a = Ipam::new("127.0.100.0/29").unwrap();
        let got: Vec<_> = (0..5).map(|i| a.allocate(&format!("u{i}")).unwrap()).collect();
        assert_eq!(got.first(), Some(&ip("127.0.100.2")));
        assert_eq!(got.last(), Some(&ip("127.0.100.6")));
        assert_eq!(a.allocate("full"), None);
        assert_eq!(a.release("u1"), Some(ip("127.0.100.3")));
        assert_eq!(a.release("u1"), None);
        assert_eq!(a.allocate("new"), Some(ip("127.0.100.3")));
        assert_eq!(a.allocate("full"), None);
    }

    #[test]
    fn next_fit_does_not_hand_back_a_just_freed_address() {
        let mut a = Ipam::new("127.0.100.0/24").unwrap();
        let first = a.allocate("a").unwrap();
        a.release("a");
        let second = a.allocate("b").unwrap();
        assert_ne!(first, second);
    }

    #[test]
    fn reserve_existing() {
        let mut a = Ipam::new("127.0.100.0/24").unwrap();
        a.reserve("old", ip("127.0.100.2")).unwrap();
        assert_eq!(a.reserve("old", ip("127.0.100.2")), Ok(()));
        assert_eq!(a.reserve("other", ip("127.0.100.2")), Err("old".to_string()));
        assert_eq!(a.allocate("new"), Some(ip("127.0.100.3")));
        assert_eq!(a.allocate("old"), Some(ip("127.0.100.2")));
        // Out-of-range addresses are recorded but never allocated.
        a.reserve("foreign", ip("10.1.2.3")).unwrap();
        assert_eq!(a.allocate("foreign"), Some(ip("10.1.2.3")));
        assert_eq!(a.release("foreign"), Some(ip("10.1.2.3")));
        assert_eq!(a.release("foreign"), None);
    }
}
