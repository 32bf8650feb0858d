//! The pod status a kubelet reports, computed from the containers' live state:
//! phase, IPs, start time, QoS class, conditions with their transition times,
//! container statuses. Pure.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::ctx::{CState, Run};
use super::restart::Policy;

/// Conditions this stand-in owns (others, like PodScheduled, are kept as the API has them).
pub const OWNED: [&str; 4] = [
    "PodReadyToStartContainers",
    "Initialized",
    "ContainersReady",
    "Ready",
];

/// Last transition of each owned condition.
#[derive(Debug, Clone, Default)]
pub struct Transitions(BTreeMap<String, (bool, Timestamp)>);

impl Transitions {
    /// Start from what the API shows (a restarted stand-in keeps the times).
    pub fn from_pod(pod: &Pod) -> Transitions {
        let mut m = BTreeMap::new();
        for c in pod
            .status
            .iter()
            .flat_map(|s| s.conditions.iter().flatten())
        {
            if let Some(t) = &c.last_transition_time {
                m.insert(c.type_.clone(), (c.status == "True", t.0));
            }
        }
        Transitions(m)
    }

    fn set(&mut self, kind: &str, status: bool, now: Timestamp) -> Timestamp {
        match self.0.get(kind) {
            Some((s, t)) if *s == status => *t,
            _ => {
                self.0.insert(kind.to_string(), (status, now));
                now
            }
        }
    }
}

/// Everything the status is made of.
pub struct Inputs<'a> {
    /// The pod as the API last showed it.
    pub pod: &'a Pod,
    /// Its IP once the sandbox exists.
    pub pod_ip: Option<Ipv4Addr>,
    /// The node's IP.
    pub host_ip: Ipv4Addr,
    /// When the stand-in accepted the pod.
    pub start_time: Timestamp,
    /// The sandbox exists.
    pub sandbox_ready: bool,
    /// Init containers have all completed.
    pub initialized: bool,
    /// Init containers.
    pub init: &'a [CState],
    /// Main containers.
    pub containers: &'a [CState],
    /// An init container failed for good (restartPolicy Never).
    pub init_failed: bool,
    /// The pod is being torn down after deletion: report a terminal phase.
    pub terminated: bool,
    /// Now.
    pub now: Timestamp,
}

/// Phase from the containers, as the kubelet's getPhase.
pub fn phase(inp: &Inputs<'_>, policy: Policy) -> &'static str {
    if inp.init_failed {
        return "Failed";
    }
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for c in inp.containers {
        match &c.state {
            Run::Running { .. } => running += 1,
            Run::Terminated { exit_code, .. } => {
                stopped += 1;
                if *exit_code == 0 {
                    succeeded += 1;
                }
            }
            Run::Waiting { .. } => {
                if let Some(Run::Terminated { exit_code, .. }) = &c.last {
                    stopped += 1;
                    if *exit_code == 0 {
                        succeeded += 1;
                    }
                } else {
                    waiting += 1;
                }
            }
        }
    }
    if inp.terminated {
        return if stopped > 0 && stopped == succeeded && running == 0 && waiting == 0 {
            "Succeeded"
        } else {
            "Failed"
        };
    }
    if !inp.sandbox_ready || !inp.initialized || waiting > 0 {
        return "Pending";
    }
    if running > 0 {
        return "Running";
    }
    if stopped > 0 {
        return match policy {
            Policy::Always => "Running",
            _ if stopped == succeeded => "Succeeded",
            Policy::Never => "Failed",
            Policy::OnFailure => "Running",
        };
    }
    "Pending"
}

/// QoS class from requests and limits.
pub fn qos_class(pod: &Pod) -> &'static str {
    let Some(spec) = pod.spec.as_ref() else {
        return "BestEffort";
    };
    let mut any = false;
    let mut guaranteed = true;
    for c in &spec.containers {
        let r = c.resources.as_ref();
        let req = r.and_then(|r| r.requests.as_ref());
        let lim = r.and_then(|r| r.limits.as_ref());
        if req.is_some_and(|m| !m.is_empty()) || lim.is_some_and(|m| !m.is_empty()) {
            any = true;
        }
        for res in ["cpu", "memory"] {
            let l = lim.and_then(|m| m.get(res));
            let q = req.and_then(|m| m.get(res)).or(l);
            if l.is_none() || q != l {
                guaranteed = false;
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

fn container_status(c: &CState) -> ContainerStatus {
    let state = |r: &Run| match r {
        Run::Waiting { reason, message } => ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.clone()),
                message: message.clone(),
            }),
            ..ContainerState::default()
        },
        Run::Running { started_at, .. } => ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(Time(*started_at)),
            }),
            ..ContainerState::default()
        },
        Run::Terminated {
            exit_code,
            signal,
            reason,
            message,
            started_at,
            finished_at,
            pid,
        } => ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: *exit_code,
                signal: *signal,
                reason: Some(reason.clone()),
                message: message.clone(),
                started_at: started_at.map(Time),
                finished_at: Some(Time(*finished_at)),
                container_id: pid.map(container_id),
            }),
            ..ContainerState::default()
        },
    };
    let id = match &c.state {
        Run::Running { pid, .. } => Some(container_id(*pid)),
        Run::Terminated { pid, .. } => pid.map(container_id),
        Run::Waiting { .. } => None,
    };
    ContainerStatus {
        name: c.name.clone(),
        image: c.image.clone(),
        image_id: format!("tandem://{}", c.image),
        container_id: id,
        ready: c.ready,
        started: Some(c.started),
        restart_count: c.restart_count,
        state: Some(state(&c.state)),
        last_state: Some(c.last.as_ref().map(state).unwrap_or_default()),
        ..ContainerStatus::default()
    }
}

/// `tandem://<pid>`.
pub fn container_id(pid: u32) -> String {
    format!("tandem://{pid}")
}

/// The status to patch. Conditions the stand-in does not own are kept from `pod`.
pub fn build(inp: &Inputs<'_>, policy: Policy, tr: &mut Transitions) -> PodStatus {
    let phase = phase(inp, policy);
    let now = inp.now;
    let all_ready = !inp.containers.is_empty()
        && inp.containers.iter().all(|c| c.ready)
        && phase == "Running"
        && !inp.terminated;
    let unready: Vec<&str> = inp
        .containers
        .iter()
        .filter(|c| !c.ready)
        .map(|c| c.name.as_str())
        .collect();
    let completed = phase == "Succeeded" || phase == "Failed";
    let mut cond = |kind: &str, status: bool, reason: Option<String>, message: Option<String>| {
        let t = tr.set(kind, status, now);
        PodCondition {
            type_: kind.into(),
            status: if status { "True" } else { "False" }.into(),
            last_transition_time: Some(Time(t)),
            reason,
            message,
            ..PodCondition::default()
        }
    };
    let not_ready = |what: &str| {
        if completed {
            (Some("PodCompleted".to_string()), None)
        } else {
            (
                Some(format!("{what}NotReady")),
                Some(format!(
                    "containers with unready status: [{}]",
                    unready.join(" ")
                )),
            )
        }
    };
    let mut conditions: Vec<PodCondition> = inp
        .pod
        .status
        .iter()
        .flat_map(|s| s.conditions.iter().flatten())
        .filter(|c| !OWNED.contains(&c.type_.as_str()))
        .cloned()
        .collect();
    conditions.push(cond(
        "PodReadyToStartContainers",
        inp.sandbox_ready && !inp.terminated,
        None,
        None,
    ));
    let init_reason = (!inp.initialized).then(|| "ContainersNotInitialized".to_string());
    conditions.push(cond("Initialized", inp.initialized, init_reason, None));
    let (r, m) = if all_ready {
        (None, None)
    } else {
        not_ready("Containers")
    };
    conditions.push(cond("ContainersReady", all_ready, r, m));
    let (r, m) = if all_ready {
        (None, None)
    } else {
        not_ready("Containers")
    };
    conditions.push(cond("Ready", all_ready, r, m));
    let ip = inp.pod_ip.map(|i| i.to_string());
    PodStatus {
        phase: Some(phase.into()),
        pod_ip: ip.clone(),
        pod_ips: ip.map(|i| vec![PodIP { ip: i }]),
        host_ip: Some(inp.host_ip.to_string()),
        host_ips: Some(vec![HostIP {
            ip: inp.host_ip.to_string(),
        }]),
        start_time: Some(Time(inp.start_time)),
        qos_class: Some(qos_class(inp.pod).into()),
        conditions: Some(conditions),
        container_statuses: Some(inp.containers.iter().map(container_status).collect()),
        init_container_statuses: (!inp.init.is_empty())
            .then(|| inp.init.iter().map(container_status).collect()),
        ..PodStatus::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn c(state: Run, ready: bool) -> CState {
        let mut s = CState::new("c", "tandem-postgres:dev", PathBuf::from("/x"));
        s.state = state;
        s.ready = ready;
        s.started = ready;
        s
    }

    fn running() -> Run {
        Run::Running {
            started_at: Timestamp::UNIX_EPOCH,
            pid: 42,
        }
    }

    fn exited(code: i32) -> Run {
        Run::Terminated {
            exit_code: code,
            signal: None,
            reason: if code == 0 { "Completed" } else { "Error" }.into(),
            message: None,
            started_at: None,
            finished_at: Timestamp::UNIX_EPOCH,
            pid: Some(42),
        }
    }

    fn inputs<'a>(pod: &'a Pod, cs: &'a [CState], now: Timestamp) -> Inputs<'a> {
        Inputs {
            pod,
            pod_ip: Some(Ipv4Addr::new(198, 18, 1, 2)),
            host_ip: Ipv4Addr::new(198, 18, 0, 1),
            start_time: Timestamp::UNIX_EPOCH,
            sandbox_ready: true,
            initialized: true,
            init: &[],
            containers: cs,
            init_failed: false,
            terminated: false,
            now,
        }
    }

    #[test]
    fn phases_follow_the_kubelet() {
        let pod = Pod::default();
        let now = Timestamp::UNIX_EPOCH;
        let w = [CState::new("c", "i", PathBuf::new())];
        assert_eq!(phase(&inputs(&pod, &w, now), Policy::Always), "Pending");
        let r = [c(running(), false)];
        assert_eq!(phase(&inputs(&pod, &r, now), Policy::Always), "Running");
        let ok = [c(exited(0), false)];
        assert_eq!(phase(&inputs(&pod, &ok, now), Policy::Never), "Succeeded");
        assert_eq!(phase(&inputs(&pod, &ok, now), Policy::Always), "Running");
        let bad = [c(exited(1), false)];
        assert_eq!(phase(&inputs(&pod, &bad, now), Policy::Never), "Failed");
        assert_eq!(
            phase(&inputs(&pod, &bad, now), Policy::OnFailure),
            "Running"
        );
        let mut backoff = c(
            Run::Waiting {
                reason: "CrashLoopBackOff".into(),
                message: None,
            },
            false,
        );
        backoff.last = Some(exited(1));
        assert_eq!(
            phase(&inputs(&pod, &[backoff], now), Policy::Always),
            "Running"
        );
        let mut t = inputs(&pod, &r, now);
        t.terminated = true;
        assert_eq!(phase(&t, Policy::Always), "Failed");
    }

    #[test]
    fn ready_transition_time_moves_only_on_change() {
        let pod = Pod::default();
        let mut tr = Transitions::default();
        let t0 = Timestamp::from_second(100).expect("t");
        let t1 = Timestamp::from_second(200).expect("t");
        let t2 = Timestamp::from_second(300).expect("t");
        let ready_time = |s: &PodStatus| {
            s.conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == "Ready")
                .map(|c| {
                    (
                        c.status.clone(),
                        c.last_transition_time.as_ref().map(|t| t.0),
                    )
                })
        };
        let cs = [c(running(), false)];
        let s = build(&inputs(&pod, &cs, t0), Policy::Always, &mut tr);
        assert_eq!(ready_time(&s), Some(("False".into(), Some(t0))));
        let cs = [c(running(), true)];
        let s = build(&inputs(&pod, &cs, t1), Policy::Always, &mut tr);
        assert_eq!(ready_time(&s), Some(("True".into(), Some(t1))));
        let s = build(&inputs(&pod, &cs, t2), Policy::Always, &mut tr);
        assert_eq!(ready_time(&s), Some(("True".into(), Some(t1))));
        let st = s.container_statuses.expect("statuses");
        assert_eq!(st[0].container_id.as_deref(), Some("tandem://42"));
        assert_eq!(s.qos_class.as_deref(), Some("BestEffort"));
    }
}
