//! Keeps every running pod's hosts file current: once a second, render it
//! from the cluster-wide Service and Pod caches and rewrite it in place when
//! it changed. I/O (files).

use std::sync::Arc;
use std::time::Duration;

use super::ctx::{lock, Ctx, HostsTarget, PodShared};
use super::hosts::{self, HostsFor};

/// The hosts file of one pod now.
pub fn render_for(ctx: &Ctx, pod: &PodShared, t: &HostsTarget) -> String {
    let services = ctx.services.state();
    let pods = ctx.all_pods.state();
    let ip = t.ip.to_string();
    hosts::render(
        &HostsFor {
            namespace: &pod.namespace,
            hostname: &t.hostname,
            subdomain: t.subdomain.as_deref(),
            ip: &ip,
        },
        services.iter().map(|s| s.as_ref()),
        pods.iter().map(|p| p.as_ref()),
    )
}

/// Rewrite changed hosts files every second, until the process ends.
pub async fn run(ctx: Arc<Ctx>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let pods: Vec<Arc<PodShared>> = lock(&ctx.pods).values().cloned().collect();
        for p in pods {
            let Some(t) = lock(&p.hosts).clone() else {
                continue;
            };
            let content = render_for(&ctx, &p, &t);
            if content == t.written {
                continue;
            }
            match hosts::write_in_place(&t.path, &content) {
                Ok(()) => {
                    if let Some(cur) = lock(&p.hosts).as_mut() {
                        cur.written = content;
                    }
                }
                Err(e) => tracing::warn!(pod = %p.name, error = %e, "hosts file"),
            }
        }
    }
}
