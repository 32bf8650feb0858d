//! End-to-end suite for tandem against the Kubernetes cluster in KUBECONFIG.
//! The suite itself lives in `tests/`; this crate only holds shared helpers.
