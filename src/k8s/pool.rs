//! Keys of onion services published ahead of demand (the lease logic's pool), one Secret per slot.
//!
//! A pool Secret is labelled like every managed object plus `paygress.io/pool=<slot>`, and has no lease
//! label, so the reconciler never takes it for a lease's orphan. Taking a slot deletes its Secret under
//! its uid and resourceVersion, which succeeds at most once: only the taker holds the key, and stores it
//! as the lease's onion Secret. A crash in between loses a key nobody was given (no RBAC beyond create
//! and delete is needed, and no address can end up both in the pool and with a lease).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::api::{DeleteParams, Preconditions};
use tracing::info;

use super::objects::{self, LABEL_LEASE, LABEL_PROVIDER, ONION_KEY};
use super::{Action, KubeCluster, KubeError};
use crate::lease::ports::PoolKey;

/// Label of an unbound pool Secret; its value is the slot.
pub const LABEL_POOL: &str = "paygress.io/pool";
const NAME_PREFIX: &str = "paygress-onion-pool-";

pub fn pool_secret_name(slot: &str) -> String {
    format!("{NAME_PREFIX}{slot}")
}

/// Slots are 32 lowercase hex digits (128 random bits), so names and selectors stay valid.
pub fn valid_slot(slot: &str) -> bool {
    slot.len() == 32 && slot.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn pool_secret(namespace: &str, provider: &str, slot: &str, key: &[u8]) -> Secret {
    let mut labels = objects::base_labels(provider);
    labels.insert(LABEL_POOL.to_string(), slot.to_string());
    Secret {
        metadata: ObjectMeta {
            name: Some(pool_secret_name(slot)),
            namespace: Some(namespace.to_string()),
            labels: Some(labels),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(ONION_KEY.to_string(), ByteString(key.to_vec()))])),
        immutable: Some(true),
        ..Default::default()
    }
}

fn key_of(secret: Secret) -> Option<Vec<u8>> {
    secret.data.and_then(|mut d| d.remove(ONION_KEY)).map(|b| b.0)
}

impl KubeCluster {
    fn check_slot(slot: &str) -> Result<(), KubeError> {
        if valid_slot(slot) {
            Ok(())
        } else {
            Err(KubeError::NotOurs {
                kind: "Secret".into(),
                name: pool_secret_name(&slot.chars().take(40).collect::<String>()),
            })
        }
    }

    pub(super) async fn store_pool_key_inner(&self, slot: &str, key: &[u8]) -> Result<(), KubeError> {
        Self::check_slot(slot)?;
        let name = pool_secret_name(slot);
        let secret = pool_secret(&self.namespace, &self.provider, slot, key);
        let created = self.create_idempotent(&self.secrets(), slot, &format!("secret/{name}"), &secret).await?;
        if created.is_none() {
            // Slots are random: an existing one is a retry of this very store, unless its key differs.
            let existing =
                self.call(slot, Action::Get, &format!("secret/{name}"), self.secrets().get_opt(&name)).await?;
            if existing.and_then(key_of).as_deref() != Some(key) {
                return Err(KubeError::OnionKeyConflict { lease_id: slot.to_string(), secret: name });
            }
        }
        Ok(())
    }

    pub(super) async fn list_pool_keys_inner(&self) -> Result<Vec<PoolKey>, KubeError> {
        let selector = format!("{},{LABEL_POOL}", objects::managed_selector(&self.provider));
        let secrets = self.list_all(&self.secrets(), "secrets", &selector).await?;
        Ok(secrets
            .into_iter()
            .filter(|s| objects::label(&s.metadata, LABEL_LEASE).is_none() && s.metadata.deletion_timestamp.is_none())
            .filter_map(|s| {
                let slot = objects::label(&s.metadata, LABEL_POOL).filter(|s| valid_slot(s))?.to_string();
                Some(PoolKey { slot, key: key_of(s)? })
            })
            .collect())
    }

    pub(super) async fn take_pool_key_inner(&self, slot: &str) -> Result<Option<Vec<u8>>, KubeError> {
        Self::check_slot(slot)?;
        let name = pool_secret_name(slot);
        let object = format!("secret/{name}");
        let Some(secret) = self.call(slot, Action::Get, &object, self.secrets().get_opt(&name)).await? else {
            return Ok(None);
        };
        let meta = &secret.metadata;
        if objects::label(meta, LABEL_PROVIDER) != Some(self.provider.as_str())
            || objects::label(meta, LABEL_POOL) != Some(slot)
            || objects::label(meta, LABEL_LEASE).is_some()
        {
            return Ok(None);
        }
        // Exactly this object: of two takers (or a taker and a discard) only one delete succeeds, and only
        // the one that deleted it uses the key.
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: meta.uid.clone(),
                resource_version: meta.resource_version.clone(),
            }),
            ..DeleteParams::default()
        };
        match self.call(slot, Action::Delete, &object, self.secrets().delete(&name, &dp)).await {
            Ok(_) => {
                info!(object, "pool onion key taken");
                Ok(key_of(secret))
            }
            // Deleted by someone else meanwhile, or replaced (409 on the precondition): not ours to use.
            Err(e) if e.is_not_found() || e.is_conflict() => Ok(None),
            Err(e) => Err(e),
        }
    }
}
