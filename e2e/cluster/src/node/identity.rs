//! Which uid/gid/groups a container's process runs as on this machine:
//! securityContext runAsUser/runAsGroup (container over pod, else the image's
//! USER), fsGroup and supplementalGroups as supplementary groups. A uid with no
//! account here that `run_as` names maps to that account (999 → `postgres`,
//! because initdb and postgres need a passwd entry); a gid that `run_as`
//! names maps to that account's primary group. Pure but for the passwd
//! lookups, which are passed in.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, PodSecurityContext};

use super::images::Image;

/// A passwd entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// uid.
    pub uid: u32,
    /// Primary gid.
    pub gid: u32,
    /// Home directory.
    pub home: String,
}

/// passwd lookups.
pub trait Accounts {
    /// By uid.
    fn by_uid(&self, uid: u32) -> Option<Account>;
    /// By name.
    fn by_name(&self, name: &str) -> Option<Account>;
}

/// This machine's passwd.
pub struct HostAccounts;

impl Accounts for HostAccounts {
    fn by_uid(&self, uid: u32) -> Option<Account> {
        nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map(account)
    }
    fn by_name(&self, name: &str) -> Option<Account> {
        nix::unistd::User::from_name(name)
            .ok()
            .flatten()
            .map(account)
    }
}

fn account(u: nix::unistd::User) -> Account {
    Account {
        uid: u.uid.as_raw(),
        gid: u.gid.as_raw(),
        home: u.dir.display().to_string(),
    }
}

/// The host identity of a container's process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// uid.
    pub uid: u32,
    /// gid.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// HOME.
    pub home: String,
}

/// Map a pod gid (fsGroup, runAsGroup) to this machine.
pub fn map_gid(gid: u32, run_as: &BTreeMap<u32, String>, accts: &dyn Accounts) -> u32 {
    run_as
        .get(&gid)
        .and_then(|n| accts.by_name(n))
        .map_or(gid, |a| a.gid)
}

/// The pod's fsGroup on this machine, if it has one.
pub fn fs_group(
    pod_sc: Option<&PodSecurityContext>,
    run_as: &BTreeMap<u32, String>,
    accts: &dyn Accounts,
) -> Option<u32> {
    pod_sc
        .and_then(|s| s.fs_group)
        .and_then(|g| u32::try_from(g).ok())
        .map(|g| map_gid(g, run_as, accts))
}

/// The identity of `container`.
pub fn resolve(
    pod_sc: Option<&PodSecurityContext>,
    container: &Container,
    image: &Image,
    run_as: &BTreeMap<u32, String>,
    accts: &dyn Accounts,
) -> Identity {
    let csc = container.security_context.as_ref();
    let to_u32 = |v: Option<i64>| v.and_then(|v| u32::try_from(v).ok());
    let uid = to_u32(csc.and_then(|s| s.run_as_user))
        .or(to_u32(pod_sc.and_then(|s| s.run_as_user)))
        .unwrap_or(image.user.0);
    let gid = to_u32(csc.and_then(|s| s.run_as_group))
        .or(to_u32(pod_sc.and_then(|s| s.run_as_group)))
        .or((uid == image.user.0).then_some(image.user.1));
    let (host_uid, acct) = match accts.by_uid(uid) {
        Some(a) => (uid, Some(a)),
        None => match run_as.get(&uid).and_then(|n| accts.by_name(n)) {
            Some(a) => (a.uid, Some(a)),
            None => (uid, None),
        },
    };
    let host_gid = match gid {
        Some(g) => map_gid(g, run_as, accts),
        None => acct.as_ref().map_or(0, |a| a.gid),
    };
    let mut groups = Vec::new();
    if let Some(g) = fs_group(pod_sc, run_as, accts) {
        groups.push(g);
    }
    for g in pod_sc
        .and_then(|s| s.supplemental_groups.as_ref())
        .into_iter()
        .flatten()
    {
        if let Ok(g) = u32::try_from(*g) {
            groups.push(map_gid(g, run_as, accts));
        }
    }
    groups.sort_unstable();
    groups.dedup();
    Identity {
        uid: host_uid,
        gid: host_gid,
        groups,
        home: acct.map_or_else(|| "/".to_string(), |a| a.home),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::images::ImageKind;
    use k8s_openapi::api::core::v1::SecurityContext;
    use nix::sys::signal::Signal;

    struct Fake;
    impl Accounts for Fake {
        fn by_uid(&self, uid: u32) -> Option<Account> {
            (uid == 101).then(pg)
        }
        fn by_name(&self, name: &str) -> Option<Account> {
            (name == "postgres").then(pg)
        }
    }
    fn pg() -> Account {
        Account {
            uid: 101,
            gid: 104,
            home: "/var/lib/postgresql".into(),
        }
    }
    fn image() -> Image {
        Image {
            kind: ImageKind::Postgres,
            entrypoint: vec![],
            cmd: vec![],
            env: vec![],
            user: (999, 999),
            stop_signal: Signal::SIGINT,
            private_dirs: vec![],
        }
    }

    #[test]
    fn postgres_uid_999_maps_to_the_hosts_postgres_account() {
        let run_as = BTreeMap::from([(999, "postgres".to_string())]);
        let sc = PodSecurityContext {
            run_as_user: Some(999),
            run_as_group: Some(999),
            fs_group: Some(999),
            ..PodSecurityContext::default()
        };
        let id = resolve(Some(&sc), &Container::default(), &image(), &run_as, &Fake);
        assert_eq!(
            id,
            Identity {
                uid: 101,
                gid: 104,
                groups: vec![104],
                home: "/var/lib/postgresql".into()
            }
        );
    }

    #[test]
    fn unmapped_uids_run_as_they_are_and_container_overrides_pod() {
        let run_as = BTreeMap::from([(999, "postgres".to_string())]);
        let sc = PodSecurityContext {
            run_as_user: Some(999),
            ..PodSecurityContext::default()
        };
        let c = Container {
            security_context: Some(SecurityContext {
                run_as_user: Some(65532),
                run_as_group: Some(65532),
                ..SecurityContext::default()
            }),
            ..Container::default()
        };
        let id = resolve(Some(&sc), &c, &image(), &run_as, &Fake);
        assert_eq!((id.uid, id.gid, id.home.as_str()), (65532, 65532, "/"));
        // No securityContext: the image's USER.
        let id = resolve(None, &Container::default(), &image(), &run_as, &Fake);
        assert_eq!((id.uid, id.gid), (101, 104));
    }
}
