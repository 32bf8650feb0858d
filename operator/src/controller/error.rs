//! The controller's error type and its bounded categories (no I/O).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::watched::Unreadable;

/// Shortest wait after a transient failure.
const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Longest wait after repeated transient failures.
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// Why a spec was refused: one line per problem, each saying what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// The problems found, in spec order.
    pub problems: Vec<String>,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.problems.join("; "))
    }
}

/// Everything a reconcile can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec is valid for the schema but not for tandem; waits for a change.
    #[error("invalid spec: {0}")]
    InvalidSpec(Invalid),

    /// The stored object does not deserialize into this operator's DbCluster type; waits for a change.
    #[error("cannot read this DbCluster: {0}; fix or remove the field (the operator ignores this object until then)")]
    Unreadable(Arc<Unreadable>),

    /// The object lacks metadata the API server always sets (namespace, uid).
    #[error("DbCluster is missing metadata.{0}")]
    MissingMetadata(&'static str),

    /// A call to the API server failed.
    #[error("{action} {kind} {name}: {source}")]
    Kube {
        /// What was attempted (get, list, apply, create, patch).
        action: &'static str,
        /// Kind of the object.
        kind: &'static str,
        /// Name of the object (or the label selector of a list).
        name: String,
        /// The client's error.
        #[source]
        source: Box<kube::Error>,
    },

    /// An object could not be encoded for an apply.
    #[error("encode {kind} {name}: {source}")]
    Encode {
        /// Kind of the object.
        kind: &'static str,
        /// Name of the object.
        name: String,
        /// The encoder's error.
        #[source]
        source: serde_json::Error,
    },
}

/// Bounded error categories: metric label values and Event reasons come from here only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Category {
    /// The spec is invalid (see the Ready condition).
    InvalidSpec,
    /// The stored object does not deserialize.
    Unreadable,
    /// Required metadata was missing.
    Metadata,
    /// The API server refused the request because of a conflict.
    Conflict,
    /// The API server denied access (RBAC).
    Forbidden,
    /// Any other API failure (network, server error, timeout).
    Api,
    /// Encoding an object failed.
    Encode,
}

impl Category {
    /// snake_case label value for metrics.
    pub fn as_label(self) -> &'static str {
        match self {
            Self::InvalidSpec => "invalid_spec",
            Self::Unreadable => "unreadable",
            Self::Metadata => "metadata",
            Self::Conflict => "conflict",
            Self::Forbidden => "forbidden",
            Self::Api => "api",
            Self::Encode => "encode",
        }
    }

    /// PascalCase Event reason.
    pub fn event_reason(self) -> &'static str {
        match self {
            Self::InvalidSpec => "InvalidSpec",
            Self::Unreadable => "UnreadableSpec",
            Self::Metadata => "MissingMetadata",
            Self::Conflict => "ApiConflict",
            Self::Forbidden => "ApiForbidden",
            Self::Api => "ApiError",
            Self::Encode => "EncodeError",
        }
    }

    /// Whether retrying without a change to the object can help.
    pub fn is_transient(self) -> bool {
        !matches!(
            self,
            Self::InvalidSpec | Self::Unreadable | Self::Metadata | Self::Encode
        )
    }
}

impl Error {
    /// The error's bounded category.
    pub fn category(&self) -> Category {
        match self {
            Self::InvalidSpec(_) => Category::InvalidSpec,
            Self::Unreadable(_) => Category::Unreadable,
            Self::MissingMetadata(_) => Category::Metadata,
            Self::Encode { .. } => Category::Encode,
            Self::Kube { source, .. } => match source.as_ref() {
                kube::Error::Api(status) if status.is_conflict() => Category::Conflict,
                kube::Error::Api(status) if status.is_forbidden() => Category::Forbidden,
                _ => Category::Api,
            },
        }
    }

    /// Wrap a client error with what was attempted.
    pub fn kube(
        action: &'static str,
        kind: &'static str,
        name: impl Into<String>,
        source: kube::Error,
    ) -> Self {
        Self::Kube {
            action,
            kind,
            name: name.into(),
            source: Box::new(source),
        }
    }
}

/// Wait after the `failures`-th consecutive transient failure: 1s, 2s, 4s… up to 5 minutes.
pub fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    BACKOFF_BASE.saturating_mul(1 << exp).min(BACKOFF_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_a_cap() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(5), Duration::from_secs(16));
        assert_eq!(backoff(40), BACKOFF_MAX);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }
}
