//! Parsing and checking of single values: tiers, URLs, names, quantities; and the collector of errors.

use std::collections::BTreeMap;

use super::ConfigError;
use crate::protocol::Tier;

/// Normalise a mint URL for exact comparison: lowercase scheme and host, no default port, no trailing
/// slash, no query or fragment. Returns None for anything that is not an http(s) URL.
pub fn normalize_mint_url(raw: &str) -> Option<String> {
    let url = url::Url::parse(raw.trim()).ok()?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return None;
    }
    if !url.username().is_empty() || url.password().is_some() {
        return None;
    }
    let host = url.host_str()?.to_ascii_lowercase();
    let port = match url.port() {
        Some(p) => format!(":{p}"),
        None => String::new(),
    };
    let path = url.path().trim_end_matches('/');
    Some(format!("{}://{host}{port}{path}", url.scheme()))
}

pub(super) fn parse_tiers(raw: &str, base_rate: u64) -> Result<Vec<Tier>, String> {
    let mut tiers: Vec<Tier> = Vec::new();
    for item in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let parts: Vec<&str> = item.split(':').collect();
        if parts.len() < 3 || parts.len() > 5 {
            return Err(format!("{item:?}: expected name:cpu:memory[:sats_per_hour[:runtime_class]]"));
        }
        let name = parts[0].to_string();
        if !is_dns_label(&name) {
            return Err(format!("{item:?}: tier name must be lowercase letters, digits and '-'"));
        }
        if !is_quantity(parts[1]) || !is_quantity(parts[2]) {
            return Err(format!("{item:?}: cpu and memory must be Kubernetes quantities like 500m or 1Gi"));
        }
        let sats_per_hour = match parts.get(3).filter(|r| !r.is_empty()) {
            Some(r) => {
                r.parse::<u64>().ok().filter(|r| *r > 0).ok_or(format!("{item:?}: rate must be a positive integer"))?
            }
            None => base_rate.max(1),
        };
        if tiers.iter().any(|t| t.name == name) {
            return Err(format!("tier {name:?} appears twice"));
        }
        let mut tier = Tier::new(&name, parts[1], parts[2], sats_per_hour);
        if let Some(rc) = parts.get(4) {
            // A RuntimeClass name is a DNS subdomain; its pods get their own (user-space) kernel.
            if rc.is_empty() || rc.len() > 253 || !rc.split('.').all(is_dns_label) {
                return Err(format!("{item:?}: runtime class must be a RuntimeClass name like gvisor"));
            }
            tier.runtime_class = Some(rc.to_string());
            tier.isolation = "sandbox".into();
        }
        tiers.push(tier);
    }
    if tiers.is_empty() {
        return Err("at least one tier is needed".into());
    }
    Ok(tiers)
}

pub(super) fn is_hex_key(v: &str) -> bool {
    v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit())
}

/// RFC 1123 label, as Kubernetes requires of namespace names.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_quantity(s: &str) -> bool {
    let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let suffix = &s[digits.len()..];
    !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && matches!(suffix, "" | "m" | "k" | "M" | "G" | "T" | "Ki" | "Mi" | "Gi" | "Ti")
}

pub(super) struct Parser<'a> {
    pub(super) env: &'a BTreeMap<String, String>,
    pub(super) errors: Vec<ConfigError>,
}

impl Parser<'_> {
    pub(super) fn err(&mut self, var: &'static str, message: String) {
        self.errors.push(ConfigError { var, message });
    }

    pub(super) fn str(&self, var: &str, default: &str) -> String {
        match self.env.get(var).map(|v| v.trim()) {
            Some(v) if !v.is_empty() => v.to_string(),
            _ => default.to_string(),
        }
    }

    pub(super) fn list(&self, var: &str, default: &str) -> Vec<String> {
        self.str(var, default).split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
    }

    pub(super) fn num(&mut self, var: &'static str, default: u64) -> u64 {
        let raw = self.str(var, "");
        if raw.is_empty() {
            return default;
        }
        raw.parse().unwrap_or_else(|_| {
            self.err(var, format!("{raw:?} is not a non-negative integer"));
            default
        })
    }

    pub(super) fn bool(&mut self, var: &'static str, default: bool) -> bool {
        match self.str(var, "").to_ascii_lowercase().as_str() {
            "" => default,
            "true" | "1" | "yes" | "on" => true,
            "false" | "0" | "no" | "off" => false,
            other => {
                self.err(var, format!("{other:?} is not true or false"));
                default
            }
        }
    }
}
