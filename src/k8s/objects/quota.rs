//! Room left in the namespace's ResourceQuotas for one more lease.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// A Kubernetes quantity in thousandths of its unit ("500m" → 500, "1" → 1000, "1Ki" → 1 024 000), or
/// None for what this reader does not understand (then nothing is concluded from it).
pub fn milli_quantity(q: &str) -> Option<u128> {
    let q = q.trim();
    let split = q.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
    if whole.is_empty() && frac.is_empty() {
        return None;
    }
    let frac3: String = frac.chars().chain(std::iter::repeat('0')).take(3).collect();
    let base: u128 = whole.parse::<u128>().unwrap_or(0).checked_mul(1000)?.checked_add(frac3.parse::<u128>().ok()?)?;
    let mult: u128 = match suffix {
        "" => 1,
        "m" => return Some(base / 1000),
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        _ => return None,
    };
    base.checked_mul(mult)
}

/// How many more pods of this need fit in a quota of `hard` with `used` taken; the smallest over every
/// resource both name (None when none is named).
pub fn room_in_quota(
    hard: &BTreeMap<String, Quantity>,
    used: &BTreeMap<String, Quantity>,
    need: &[(&str, &str)],
) -> Option<u64> {
    let mut room: Option<u64> = None;
    for (resource, amount) in need {
        let (Some(h), Some(u)) = (hard.get(*resource), used.get(*resource)) else { continue };
        let (Some(h), Some(u), Some(n)) = (milli_quantity(&h.0), milli_quantity(&u.0), milli_quantity(amount)) else {
            continue;
        };
        let fits = h.saturating_sub(u).checked_div(n).map_or(u64::MAX, |f| u64::try_from(f).unwrap_or(u64::MAX));
        room = Some(room.map_or(fits, |r| r.min(fits)));
    }
    room
}
