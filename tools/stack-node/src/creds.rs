//! Which SSH credentials a pod accepts, derived from its spec the way the
//! `linuxserver/openssh-server` image derives them from its environment.
//!
//! Everything here is pure: resolving `valueFrom` references against the API
//! happens in `pods.rs`, which hands this module a plain name → value map.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use russh::keys::PublicKey;

/// The port the openssh-server image listens on (its `LISTEN_PORT` default).
pub const SSH_PORT: u16 = 2222;

/// Default login of the linuxserver image when `USER_NAME` is unset.
pub const DEFAULT_USER: &str = "linuxserver.io";

/// Env names that mark a container as the linuxserver openssh-server.
const SSH_ENV_HINTS: &[&str] = &["USER_NAME", "USER_PASSWORD", "PASSWORD_ACCESS", "PUBLIC_KEY", "LISTEN_PORT"];

/// Where the value of one env var comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvSource {
    Literal(String),
    SecretKey {
        name: String,
        key: String,
        optional: bool,
    },
    ConfigMapKey {
        name: String,
        key: String,
        optional: bool,
    },
    /// `envFrom: secretRef` — every key of the Secret, with a prefix.
    SecretAll {
        name: String,
        prefix: String,
        optional: bool,
    },
    /// `envFrom: configMapRef` — every key of the ConfigMap, with a prefix.
    ConfigMapAll {
        name: String,
        prefix: String,
        optional: bool,
    },
    /// fieldRef/resourceFieldRef/fileKeyRef…: not needed for SSH credentials.
    Unsupported,
}

/// The container that plays the SSH server: the first one exposing
/// containerPort 2222, else the first one that looks like openssh-server
/// (image name or its env vars).
pub fn ssh_container(pod: &Pod) -> Option<&Container> {
    let containers = &pod.spec.as_ref()?.containers;
    containers
        .iter()
        .find(|c| c.ports.as_ref().is_some_and(|ps| ps.iter().any(|p| p.container_port == i32::from(SSH_PORT))))
        .or_else(|| {
            containers.iter().find(|c| {
                c.image.as_deref().is_some_and(|i| i.contains("openssh-server"))
                    || c.env.as_ref().is_some_and(|env| env.iter().any(|e| SSH_ENV_HINTS.contains(&e.name.as_str())))
            })
        })
}

/// The env sources of a container in Kubernetes precedence order: `envFrom`
/// entries first, then `env` (later entries win when resolved in order).
pub fn env_sources(c: &Container) -> Vec<(Option<String>, EnvSource)> {
    let mut out = Vec::new();
    for ef in c.env_from.iter().flatten() {
        let prefix = ef.prefix.clone().unwrap_or_default();
        if let Some(s) = &ef.secret_ref {
            out.push((
                None,
                EnvSource::SecretAll {
                    name: s.name.clone(),
                    prefix: prefix.clone(),
                    optional: s.optional.unwrap_or(false),
                },
            ));
        }
        if let Some(cm) = &ef.config_map_ref {
            out.push((
                None,
                EnvSource::ConfigMapAll { name: cm.name.clone(), prefix, optional: cm.optional.unwrap_or(false) },
            ));
        }
    }
    for e in c.env.iter().flatten() {
        let src = match (&e.value, &e.value_from) {
            (_, Some(vf)) => {
                if let Some(s) = &vf.secret_key_ref {
                    EnvSource::SecretKey {
                        name: s.name.clone(),
                        key: s.key.clone(),
                        optional: s.optional.unwrap_or(false),
                    }
                } else if let Some(cm) = &vf.config_map_key_ref {
                    EnvSource::ConfigMapKey {
                        name: cm.name.clone(),
                        key: cm.key.clone(),
                        optional: cm.optional.unwrap_or(false),
                    }
                } else {
                    EnvSource::Unsupported
                }
            }
            (Some(v), None) => EnvSource::Literal(v.clone()),
            // `value` omitted means the empty string in Kubernetes.
            (None, None) => EnvSource::Literal(String::new()),
        };
        out.push((Some(e.name.clone()), src));
    }
    out
}

/// The credentials one pod's SSH server accepts.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    pub user: String,
    /// Only set when `PASSWORD_ACCESS` is exactly "true" and `USER_PASSWORD` is non-empty.
    pub password: Option<String>,
    pub keys: Vec<PublicKey>,
    /// PUBLIC_KEY lines that did not parse (logged by the caller).
    pub bad_key_lines: usize,
}

impl Credentials {
    /// Derive from a resolved env map, as the openssh-server image's init scripts do.
    pub fn from_env(env: &BTreeMap<String, String>) -> Self {
        let user = env.get("USER_NAME").map(|s| s.trim()).filter(|s| !s.is_empty()).unwrap_or(DEFAULT_USER).to_string();
        let password = if env.get("PASSWORD_ACCESS").map(String::as_str) == Some("true") {
            env.get("USER_PASSWORD").filter(|p| !p.is_empty()).cloned()
        } else {
            None
        };
        let mut keys = Vec::new();
        let mut bad_key_lines = 0;
        if let Some(pk) = env.get("PUBLIC_KEY") {
            for line in pk.lines().map(str::trim) {
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                match PublicKey::from_openssh(line) {
                    Ok(k) => keys.push(k),
                    Err(_) => bad_key_lines += 1,
                }
            }
        }
        Credentials { user, password, keys, bad_key_lines }
    }

    pub fn password_enabled(&self) -> bool {
        self.password.is_some()
    }

    pub fn check_password(&self, user: &str, password: &str) -> bool {
        let user_ok = ct_eq(user.as_bytes(), self.user.as_bytes());
        let pw_ok = match &self.password {
            Some(p) => ct_eq(password.as_bytes(), p.as_bytes()),
            None => false,
        };
        user_ok & pw_ok
    }

    pub fn check_key(&self, user: &str, key: &PublicKey) -> bool {
        user == self.user && self.keys.iter().any(|k| k.key_data() == key.key_data())
    }
}

/// Comparison whose time does not depend on where the inputs differ.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for (i, x) in a.iter().enumerate() {
        let y = b.get(i % b.len().max(1)).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;

    const KEY_A: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIME97smDHeUpC9tARU3trk0V+Gfq6kZZw1ALKSc5tiZ4 alice@test";
    const KEY_B: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGWiBt8nOkF+44MhmjazspLdf/MVT7kZOKlcMF20d8Ll";

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn password_login_needs_password_access_true() {
        let c = Credentials::from_env(&env(&[
            ("USER_NAME", "alice"),
            ("USER_PASSWORD", "secret"),
            ("PASSWORD_ACCESS", "true"),
        ]));
        assert!(c.check_password("alice", "secret"));
        assert!(!c.check_password("alice", "Secret"));
        assert!(!c.check_password("alice", "secre"));
        assert!(!c.check_password("alice", "secret2"));
        assert!(!c.check_password("alice", ""));
        assert!(!c.check_password("bob", "secret"));
        assert!(!c.check_password("root", "secret"));

        for pa in ["false", "True", "yes", "1", ""] {
            let c = Credentials::from_env(&env(&[
                ("USER_NAME", "alice"),
                ("USER_PASSWORD", "secret"),
                ("PASSWORD_ACCESS", pa),
            ]));
            assert!(!c.password_enabled(), "PASSWORD_ACCESS={pa:?}");
            assert!(!c.check_password("alice", "secret"));
        }
        let c = Credentials::from_env(&env(&[("USER_NAME", "alice"), ("USER_PASSWORD", "s")]));
        assert!(!c.check_password("alice", "s"));
    }

    #[test]
    fn empty_password_is_never_accepted() {
        let c =
            Credentials::from_env(&env(&[("USER_NAME", "alice"), ("USER_PASSWORD", ""), ("PASSWORD_ACCESS", "true")]));
        assert!(!c.password_enabled());
        assert!(!c.check_password("alice", ""));
    }

    #[test]
    fn default_user_name() {
        let c = Credentials::from_env(&env(&[("USER_PASSWORD", "pw"), ("PASSWORD_ACCESS", "true")]));
        assert_eq!(c.user, DEFAULT_USER);
        assert!(c.check_password("linuxserver.io", "pw"));
        let c = Credentials::from_env(&env(&[("USER_NAME", "")]));
        assert_eq!(c.user, DEFAULT_USER);
    }

    #[test]
    fn public_keys_multiline() {
        let pk = format!("{KEY_A}\n\n# comment\n  {KEY_B}  \nnot a key\n");
        let c = Credentials::from_env(&env(&[("USER_NAME", "alice"), ("PUBLIC_KEY", &pk)]));
        assert_eq!(c.keys.len(), 2);
        assert_eq!(c.bad_key_lines, 1);
        assert!(!c.password_enabled());
        let a = PublicKey::from_openssh(KEY_A).unwrap();
        let b = PublicKey::from_openssh(KEY_B).unwrap();
        assert!(c.check_key("alice", &a));
        assert!(c.check_key("alice", &b));
        assert!(!c.check_key("bob", &a));
        let only_a = Credentials::from_env(&env(&[("USER_NAME", "alice"), ("PUBLIC_KEY", KEY_A)]));
        assert!(!only_a.check_key("alice", &b));
        // The comment is not part of the key's identity.
        let a_nocomment = PublicKey::from_openssh(KEY_A.rsplit_once(' ').unwrap().0).unwrap();
        assert!(only_a.check_key("alice", &a_nocomment));
    }

    #[test]
    fn no_credentials_accept_nothing() {
        let c = Credentials::from_env(&BTreeMap::new());
        assert!(!c.check_password(DEFAULT_USER, ""));
        assert!(c.keys.is_empty());
    }

    #[test]
    fn picks_container_by_port_then_hints() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [
                {"name": "side", "image": "busybox"},
                {"name": "ssh", "image": "whatever", "ports": [{"containerPort": 2222}]}
            ]}
        }));
        assert_eq!(ssh_container(&p).map(|c| c.name.as_str()), Some("ssh"));

        let p = pod(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [
                {"name": "side", "image": "busybox"},
                {"name": "ssh", "image": "lscr.io/linuxserver/openssh-server:latest"}
            ]}
        }));
        assert_eq!(ssh_container(&p).map(|c| c.name.as_str()), Some("ssh"));

        let p = pod(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "web", "image": "nginx", "ports": [{"containerPort": 80}]}]}
        }));
        assert!(ssh_container(&p).is_none());

        let p = pod(serde_json::json!({"metadata": {"name": "p"}}));
        assert!(ssh_container(&p).is_none());
    }

    #[test]
    fn env_sources_in_precedence_order() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{
                "name": "ssh", "image": "x", "ports": [{"containerPort": 2222}],
                "envFrom": [{"secretRef": {"name": "all"}, "prefix": "P_"}],
                "env": [
                    {"name": "USER_NAME", "value": "alice"},
                    {"name": "USER_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "s", "key": "pw"}}},
                    {"name": "EMPTY"},
                    {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}
                ]
            }]}
        }));
        let c = ssh_container(&p).unwrap();
        let srcs = env_sources(c);
        assert_eq!(
            srcs,
            vec![
                (None, EnvSource::SecretAll { name: "all".into(), prefix: "P_".into(), optional: false }),
                (Some("USER_NAME".into()), EnvSource::Literal("alice".into())),
                (
                    Some("USER_PASSWORD".into()),
                    EnvSource::SecretKey { name: "s".into(), key: "pw".into(), optional: false }
                ),
                (Some("EMPTY".into()), EnvSource::Literal(String::new())),
                (Some("NODE".into()), EnvSource::Unsupported),
            ]
        );
    }

    #[test]
    fn ct_eq_works() {
        assert!(ct_eq(b"", b""));
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
        assert!(!ct_eq(b"ab", b"abc"));
        assert!(!ct_eq(b"", b"a"));
        assert!(!ct_eq(b"a", b""));
    }
}
