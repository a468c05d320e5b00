//! Container image references, compared in their canonical form: registry, repository, and tag or digest,
//! with Docker's defaults for what a reference leaves out (`alpine` is `docker.io/library/alpine:latest`).
//! The allowlist admits an exact reference, a repository with any tag (`repo:*`), or a repository by digest
//! only (`repo@*`); the pod then runs the canonical reference that was checked.

use std::fmt;

const DEFAULT_REGISTRY: &str = "docker.io";
const DEFAULT_TAG: &str = "latest";

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    /// `sha256:<64 hex>`.
    pub digest: Option<String>,
}

impl ImageRef {
    /// Parse a reference as `docker pull` reads it. None for what is not a reference.
    pub fn parse(s: &str) -> Option<ImageRef> {
        let s = s.trim();
        if s.is_empty() || s.len() > 512 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return None;
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (r, Some(d)),
            None => (s, None),
        };
        if let Some(d) = digest {
            let hex = d.strip_prefix("sha256:")?;
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
                return None;
            }
        }
        // A tag follows the last ':' after the last '/' (a ':' before it is a registry's port).
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(t) = tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
                && !t.starts_with(['.', '-']);
            if !ok {
                return None;
            }
        }
        let mut parts: Vec<&str> = name.split('/').collect();
        let first = parts[0];
        let registry = if parts.len() > 1 && (first.contains('.') || first.contains(':') || first == "localhost") {
            parts.remove(0);
            first.to_ascii_lowercase()
        } else {
            DEFAULT_REGISTRY.to_string()
        };
        if parts.is_empty() || !parts.iter().all(|p| valid_path_component(p)) {
            return None;
        }
        let mut repository = parts.join("/");
        if registry == DEFAULT_REGISTRY && parts.len() == 1 {
            repository = format!("library/{repository}");
        }
        let tag = match (tag, digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, None) => Some(DEFAULT_TAG.to_string()),
            (None, Some(_)) => None,
        };
        Some(ImageRef { registry, repository, tag, digest: digest.map(String::from) })
    }

    fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

fn valid_path_component(p: &str) -> bool {
    !p.is_empty()
        && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && p.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && p.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// One allowlist entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allowed {
    /// This reference exactly (canonical).
    Exact(ImageRef),
    /// `repo:*`: the repository with any tag (or digest).
    AnyTag(String),
    /// `repo@*`: the repository, pinned by a digest.
    ByDigest(String),
}

impl Allowed {
    pub fn parse(s: &str) -> Option<Allowed> {
        let s = s.trim();
        if let Some(repo) = s.strip_suffix(":*") {
            return Some(Allowed::AnyTag(ImageRef::parse(repo)?.name()));
        }
        if let Some(repo) = s.strip_suffix("@*") {
            return Some(Allowed::ByDigest(ImageRef::parse(repo)?.name()));
        }
        ImageRef::parse(s).map(Allowed::Exact)
    }

    pub fn admits(&self, image: &ImageRef) -> bool {
        match self {
            Allowed::Exact(a) => a == image,
            Allowed::AnyTag(name) => *name == image.name(),
            Allowed::ByDigest(name) => *name == image.name() && image.digest.is_some(),
        }
    }
}

/// The canonical reference to run if `requested` is admitted by `allowed`, else None.
pub fn admitted(requested: &str, allowed: &[String]) -> Option<String> {
    let image = ImageRef::parse(requested)?;
    allowed.iter().filter_map(|a| Allowed::parse(a)).any(|a| a.admits(&image)).then(|| image.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn references_get_dockers_defaults() {
        let c = |s: &str| ImageRef::parse(s).map(|r| r.to_string());
        assert_eq!(c("alpine").as_deref(), Some("docker.io/library/alpine:latest"));
        assert_eq!(
            c("linuxserver/openssh-server:latest").as_deref(),
            Some("docker.io/linuxserver/openssh-server:latest")
        );
        assert_eq!(
            c("docker.io/linuxserver/openssh-server").as_deref(),
            Some("docker.io/linuxserver/openssh-server:latest")
        );
        assert_eq!(
            c("lscr.io/linuxserver/openssh-server:latest").as_deref(),
            Some("lscr.io/linuxserver/openssh-server:latest")
        );
        assert_eq!(c("localhost:5000/a/b:v1").as_deref(), Some("localhost:5000/a/b:v1"));
        assert_eq!(c(&format!("ghcr.io/x/y@{D}")), Some(format!("ghcr.io/x/y@{D}")));
        assert_eq!(c(&format!("x:1@{D}")), Some(format!("docker.io/library/x:1@{D}")));
        for bad in ["", "UPPER/case", "a b", "x:", "x@sha256:12", "x:-bad", "a//b", "-a"] {
            assert_eq!(ImageRef::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_seeds_request_matches_its_canonical_entry() {
        let allowed = vec![
            "lscr.io/linuxserver/openssh-server:latest".to_string(),
            "docker.io/linuxserver/openssh-server:latest".to_string(),
        ];
        assert_eq!(
            admitted("linuxserver/openssh-server:latest", &allowed).as_deref(),
            Some("docker.io/linuxserver/openssh-server:latest")
        );
        assert_eq!(
            admitted("linuxserver/openssh-server", &allowed).as_deref(),
            Some("docker.io/linuxserver/openssh-server:latest")
        );
        assert_eq!(admitted("linuxserver/openssh-server:9.7", &allowed), None);
        assert_eq!(admitted("evil.io/linuxserver/openssh-server:latest", &allowed), None);
    }

    #[test]
    fn repositories_by_any_tag_or_only_by_digest() {
        let allowed = vec!["ghcr.io/org/sshd:*".to_string(), "ubuntu@*".to_string()];
        assert!(admitted("ghcr.io/org/sshd:1.2", &allowed).is_some());
        assert!(admitted("ghcr.io/org/other:1.2", &allowed).is_none());
        assert_eq!(admitted("ubuntu:24.04", &allowed), None, "a tag can move: only digests");
        assert_eq!(admitted(&format!("ubuntu@{D}"), &allowed), Some(format!("docker.io/library/ubuntu@{D}")));
        assert_eq!(admitted(&format!("library/ubuntu@{D}"), &allowed), Some(format!("docker.io/library/ubuntu@{D}")));
    }
}
