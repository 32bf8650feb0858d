//! The HA engine: `decide(spec, status, observations, now) -> (status, actions)`.
//! Pure: no kube, no tokio, no I/O.
