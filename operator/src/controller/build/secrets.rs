//! The cluster's Secrets: superuser and replication credentials and the agent
//! token. Built only for Secrets that do not exist yet; never logged. No I/O.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use rand::distr::Alphanumeric;
use rand::{CryptoRng, Rng};

use super::child_meta;
use crate::api::keys;
use crate::controller::validate::ValidCluster;

/// Superuser name written into a generated `<name>-superuser` Secret.
pub const SUPERUSER: &str = "postgres";
/// Replication role written into a generated `<name>-replication` Secret.
pub const REPLICATION_USER: &str = "replicator";
/// Key of user names in the credential Secrets.
pub const KEY_USERNAME: &str = "username";
/// Key of passwords in the credential Secrets.
pub const KEY_PASSWORD: &str = "password";
/// Key of the bearer token in `<name>-agent-token`.
pub const KEY_TOKEN: &str = "token";

/// Length of generated passwords (alphanumeric, about 190 bits).
const PASSWORD_LEN: usize = 32;
/// Length of generated agent tokens (alphanumeric, about 285 bits).
const TOKEN_LEN: usize = 48;

/// The three Secrets of a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretKind {
    /// `<name>-superuser`: username, password.
    Superuser,
    /// `<name>-replication`: username, password.
    Replication,
    /// `<name>-agent-token`: token.
    AgentToken,
}

impl SecretKind {
    /// Every kind, in apply order.
    pub const ALL: [SecretKind; 3] = [Self::Superuser, Self::Replication, Self::AgentToken];

    /// The Secret's name for a cluster.
    pub fn name(self, cluster: &str) -> String {
        match self {
            Self::Superuser => keys::secret_superuser(cluster),
            Self::Replication => keys::secret_replication(cluster),
            Self::AgentToken => keys::secret_agent_token(cluster),
        }
    }
}

/// A fresh random value for a Secret of this kind, drawn from a CSPRNG.
pub fn random_value<R: Rng + CryptoRng>(kind: SecretKind, rng: &mut R) -> String {
    let len = match kind {
        SecretKind::AgentToken => TOKEN_LEN,
        SecretKind::Superuser | SecretKind::Replication => PASSWORD_LEN,
    };
    (&mut *rng)
        .sample_iter(Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// The Secret of `kind` holding `value` (a password or the token).
pub fn secret(cluster: &ValidCluster, kind: SecretKind, value: &str) -> Secret {
    let data = match kind {
        SecretKind::Superuser => credentials(SUPERUSER, value),
        SecretKind::Replication => credentials(REPLICATION_USER, value),
        SecretKind::AgentToken => BTreeMap::from([(KEY_TOKEN.to_string(), value.to_string())]),
    };
    let mut metadata = child_meta(cluster, kind.name(&cluster.name));
    if kind != SecretKind::AgentToken {
        // The roles in the data directory carry these passwords, and the
        // volumes outlive the DbCluster: so do its credentials, or a
        // DbCluster created again with the same name could not log in to
        // the data it adopts. Delete them with the PVCs to start afresh.
        metadata.owner_references = None;
    }
    Secret {
        metadata,
        type_: Some("Opaque".into()),
        string_data: Some(data),
        ..Secret::default()
    }
}

fn credentials(user: &str, password: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (KEY_USERNAME.to_string(), user.to_string()),
        (KEY_PASSWORD.to_string(), password.to_string()),
    ])
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;
    use crate::controller::build::fixtures::cluster;

    #[test]
    fn credential_secrets_carry_username_and_password() {
        let c = cluster().valid();
        let s = secret(&c, SecretKind::Replication, "pw");
        assert_eq!(s.metadata.name.as_deref(), Some("main-replication"));
        let data = s.string_data.unwrap_or_default();
        assert_eq!(data.get("username").map(String::as_str), Some("replicator"));
        assert_eq!(data.get("password").map(String::as_str), Some("pw"));
        assert_eq!(data.len(), 2);
    }

    #[test]
    fn agent_token_secret_has_only_the_token_key() {
        let c = cluster().valid();
        let s = secret(&c, SecretKind::AgentToken, "t");
        assert_eq!(s.metadata.name.as_deref(), Some("main-agent-token"));
        let data = s.string_data.unwrap_or_default();
        assert_eq!(data.keys().collect::<Vec<_>>(), vec!["token"]);
    }

    #[test]
    fn the_agent_token_is_owned_by_the_cluster() {
        let c = cluster().valid();
        let s = secret(&c, SecretKind::AgentToken, "t");
        let owners = s.metadata.owner_references.unwrap_or_default();
        assert_eq!(owners.len(), 1);
        assert_eq!(owners[0].kind, "DbCluster");
        assert_eq!(owners[0].uid, "uid-1");
        assert_eq!(owners[0].controller, Some(true));
    }

    #[test]
    fn credentials_outlive_the_cluster_with_the_data_they_open() {
        let c = cluster().valid();
        for kind in [SecretKind::Superuser, SecretKind::Replication] {
            let s = secret(&c, kind, "pw");
            assert_eq!(s.metadata.owner_references, None, "{kind:?}");
            // Still found by the cluster's labels (to delete them with the PVCs).
            let labels = s.metadata.labels.unwrap_or_default();
            assert_eq!(
                labels.get(keys::LABEL_CLUSTER).map(String::as_str),
                Some("main")
            );
        }
    }

    #[test]
    fn random_values_are_long_alphanumeric_and_differ() {
        let mut rng = StdRng::seed_from_u64(7);
        let a = random_value(SecretKind::Superuser, &mut rng);
        let b = random_value(SecretKind::Superuser, &mut rng);
        let t = random_value(SecretKind::AgentToken, &mut rng);
        assert_eq!(a.len(), PASSWORD_LEN);
        assert_eq!(t.len(), TOKEN_LEN);
        assert_ne!(a, b);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
    }
}
