//! A container's environment as a kubelet builds it: service links, envFrom,
//! env with valueFrom (secretKeyRef, configMapKeyRef, fieldRef,
//! resourceFieldRef) and `$(VAR)` expansion. Pure: the Secrets, ConfigMaps
//! and Services it reads are fetched by the caller.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Container, Pod, Service};

/// Data of the Secrets / ConfigMaps a container refers to, by name (absent = not found).
pub type Sources = BTreeMap<String, BTreeMap<String, String>>;

/// Why a container's env cannot be built (the kubelet's CreateContainerConfigError).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvError {
    /// A non-optional Secret or ConfigMap does not exist.
    #[error("{kind} \"{name}\" not found")]
    MissingObject {
        /// `secret` or `configmap`.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// A non-optional key is missing from an existing object.
    #[error("couldn't find key {key} in {kind} {namespace}/{name}")]
    MissingKey {
        /// `Secret` or `ConfigMap`.
        kind: &'static str,
        /// The namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The key.
        key: String,
    },
    /// A fieldRef path the stand-in does not know.
    #[error("unsupported fieldRef {0}")]
    UnsupportedField(String),
}

/// Everything the env of one container depends on.
pub struct EnvInputs<'a> {
    /// The pod.
    pub pod: &'a Pod,
    /// The container.
    pub container: &'a Container,
    /// The pod's IP.
    pub pod_ip: Ipv4Addr,
    /// The node's IP.
    pub host_ip: Ipv4Addr,
    /// Services of the pod's namespace and the `kubernetes` Service of `default`.
    pub services: &'a [Service],
    /// Referenced Secrets (decoded).
    pub secrets: &'a Sources,
    /// Referenced ConfigMaps.
    pub config_maps: &'a Sources,
    /// Node allocatable (cpu cores, memory bytes) for resourceFieldRef limits without a limit.
    pub allocatable: (u64, u64),
}

/// The env the container's spec defines, in order (services first, then
/// envFrom, then env), each name once, the last definition winning.
pub fn container_env(inp: &EnvInputs<'_>) -> Result<Vec<(String, String)>, EnvError> {
    let mut out = Env::default();
    let ns = inp.pod.metadata.namespace.as_deref().unwrap_or("default");
    for (k, v) in service_env(inp.pod, inp.services) {
        out.set(k, v);
    }
    for from in inp.container.env_from.iter().flatten() {
        let prefix = from.prefix.as_deref().unwrap_or("");
        let (kind, name, optional, data) = if let Some(r) = &from.config_map_ref {
            (
                "configmap",
                &r.name,
                r.optional,
                inp.config_maps.get(&r.name),
            )
        } else if let Some(r) = &from.secret_ref {
            ("secret", &r.name, r.optional, inp.secrets.get(&r.name))
        } else {
            continue;
        };
        match data {
            Some(d) => {
                for (k, v) in d {
                    let key = format!("{prefix}{k}");
                    if is_env_name(&key) {
                        out.set(key, v.clone());
                    }
                }
            }
            None if optional == Some(true) => {}
            None => {
                return Err(EnvError::MissingObject {
                    kind,
                    name: name.clone(),
                })
            }
        }
    }
    for var in inp.container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (_, Some(from)) => {
                if let Some(r) = &from.secret_key_ref {
                    match key_of(inp.secrets, &r.name, &r.key, r.optional, "Secret", ns)? {
                        Some(v) => v,
                        None => continue,
                    }
                } else if let Some(r) = &from.config_map_key_ref {
                    match key_of(
                        inp.config_maps,
                        &r.name,
                        &r.key,
                        r.optional,
                        "ConfigMap",
                        ns,
                    )? {
                        Some(v) => v,
                        None => continue,
                    }
                } else if let Some(f) = &from.field_ref {
                    field_value(inp.pod, &f.field_path, inp.pod_ip, inp.host_ip)?
                } else if let Some(r) = &from.resource_field_ref {
                    resource_value(inp, r.container_name.as_deref(), &r.resource)
                } else {
                    String::new()
                }
            }
            (Some(v), None) => expand(v, &|name| out.get(name)),
            (None, None) => String::new(),
        };
        out.set(var.name.clone(), value);
    }
    Ok(out.0)
}

/// Env as an ordered list with unique names (a later set replaces in place).
#[derive(Default)]
struct Env(Vec<(String, String)>);

impl Env {
    fn set(&mut self, k: String, v: String) {
        match self.0.iter_mut().find(|(n, _)| *n == k) {
            Some(e) => e.1 = v,
            None => self.0.push((k, v)),
        }
    }
    fn get(&self, k: &str) -> Option<String> {
        self.0.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    }
}

fn key_of(
    sources: &Sources,
    name: &str,
    key: &str,
    optional: Option<bool>,
    kind: &'static str,
    ns: &str,
) -> Result<Option<String>, EnvError> {
    let optional = optional == Some(true);
    match sources.get(name) {
        None if optional => Ok(None),
        None => Err(EnvError::MissingObject {
            kind: if kind == "Secret" {
                "secret"
            } else {
                "configmap"
            },
            name: name.into(),
        }),
        Some(d) => match d.get(key) {
            Some(v) => Ok(Some(v.clone())),
            None if optional => Ok(None),
            None => Err(EnvError::MissingKey {
                kind,
                namespace: ns.into(),
                name: name.into(),
                key: key.into(),
            }),
        },
    }
}

/// A C identifier-ish env name as the kubelet accepts from envFrom.
fn is_env_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
}

/// The value of a downward-API field path.
pub fn field_value(
    pod: &Pod,
    path: &str,
    pod_ip: Ipv4Addr,
    host_ip: Ipv4Addr,
) -> Result<String, EnvError> {
    let m = &pod.metadata;
    let spec = pod.spec.as_ref();
    let map_key = |prefix: &str| -> Option<String> {
        let rest = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(rest.to_string())
    };
    Ok(match path {
        "metadata.name" => m.name.clone().unwrap_or_default(),
        "metadata.namespace" => m.namespace.clone().unwrap_or_default(),
        "metadata.uid" => m.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into()),
        "status.podIP" | "status.podIPs" => pod_ip.to_string(),
        "status.hostIP" | "status.hostIPs" => host_ip.to_string(),
        _ => {
            if let Some(k) = map_key("metadata.labels['") {
                m.labels
                    .as_ref()
                    .and_then(|l| l.get(&k).cloned())
                    .unwrap_or_default()
            } else if let Some(k) = map_key("metadata.annotations['") {
                m.annotations
                    .as_ref()
                    .and_then(|l| l.get(&k).cloned())
                    .unwrap_or_default()
            } else if path == "metadata.labels" || path == "metadata.annotations" {
                let map = if path == "metadata.labels" {
                    &m.labels
                } else {
                    &m.annotations
                };
                map.iter()
                    .flatten()
                    .map(|(k, v)| format!("{k}=\"{v}\""))
                    .collect::<Vec<_>>()
                    .join("\n")
            } else {
                return Err(EnvError::UnsupportedField(path.into()));
            }
        }
    })
}

/// resourceFieldRef with divisor 1: limits fall back to the node's allocatable, requests to 0.
fn resource_value(inp: &EnvInputs<'_>, container: Option<&str>, resource: &str) -> String {
    let c = container
        .and_then(|n| {
            inp.pod
                .spec
                .as_ref()
                .and_then(|s| s.containers.iter().find(|c| c.name == n))
        })
        .unwrap_or(inp.container);
    let res = c.resources.as_ref();
    let (which, name) = resource.split_once('.').unwrap_or(("limits", resource));
    let q = match which {
        "limits" => res.and_then(|r| r.limits.as_ref()),
        _ => res.and_then(|r| r.requests.as_ref()),
    }
    .and_then(|m| m.get(name))
    .map(|q| q.0.clone());
    match (q, which, name) {
        (Some(q), _, "cpu") => parse_quantity(&q)
            .map(|v| (v.ceil() as u64).max(1).to_string())
            .unwrap_or(q),
        (Some(q), _, _) => parse_quantity(&q)
            .map(|v| (v.ceil() as u64).to_string())
            .unwrap_or(q),
        (None, "limits", "cpu") => inp.allocatable.0.to_string(),
        (None, "limits", _) => inp.allocatable.1.to_string(),
        (None, _, _) => "0".into(),
    }
}

/// A resource quantity ("500m", "1Gi", "2") as a number.
pub fn parse_quantity(q: &str) -> Option<f64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    Some(n * mult)
}

/// The service link variables of a kubelet: `<SVC>_SERVICE_HOST`, `<SVC>_PORT_…`.
/// `services` holds the pod namespace's Services (used when enableServiceLinks
/// is not false) and the `kubernetes` Service of `default` (always).
pub fn service_env(pod: &Pod, services: &[Service]) -> Vec<(String, String)> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let links = pod
        .spec
        .as_ref()
        .and_then(|s| s.enable_service_links)
        .unwrap_or(true);
    let mut chosen: BTreeMap<String, &Service> = BTreeMap::new();
    for s in services {
        let sns = s.metadata.namespace.as_deref().unwrap_or("default");
        let name = s.metadata.name.clone().unwrap_or_default();
        let ip = s.spec.as_ref().and_then(|s| s.cluster_ip.as_deref());
        if matches!(ip, None | Some("") | Some("None")) {
            continue;
        }
        let master = sns == "default" && name == "kubernetes";
        if sns == ns && links {
            chosen.insert(name, s);
        } else if master {
            chosen.entry(name).or_insert(s);
        }
    }
    let mut out = Vec::new();
    for (name, s) in chosen {
        let Some(spec) = s.spec.as_ref() else {
            continue;
        };
        let ip = spec.cluster_ip.clone().unwrap_or_default();
        let n = env_prefix(&name);
        let ports = spec.ports.as_deref().unwrap_or(&[]);
        out.push((format!("{n}_SERVICE_HOST"), ip.clone()));
        if let Some(p) = ports.first() {
            out.push((format!("{n}_SERVICE_PORT"), p.port.to_string()));
        }
        for p in ports {
            if let Some(pn) = p.name.as_deref().filter(|x| !x.is_empty()) {
                out.push((
                    format!("{n}_SERVICE_PORT_{}", env_prefix(pn)),
                    p.port.to_string(),
                ));
            }
        }
        if let Some(p) = ports.first() {
            let proto = p.protocol.as_deref().unwrap_or("TCP").to_lowercase();
            out.push((format!("{n}_PORT"), format!("{proto}://{ip}:{}", p.port)));
        }
        for p in ports {
            let proto = p.protocol.as_deref().unwrap_or("TCP");
            let base = format!("{n}_PORT_{}_{}", p.port, proto.to_uppercase());
            let lower = proto.to_lowercase();
            out.push((base.clone(), format!("{lower}://{ip}:{}", p.port)));
            out.push((format!("{base}_PROTO"), lower));
            out.push((format!("{base}_PORT"), p.port.to_string()));
            out.push((format!("{base}_ADDR"), ip.clone()));
        }
    }
    out
}

fn env_prefix(name: &str) -> String {
    name.to_uppercase().replace('-', "_")
}

/// Kubernetes' `$(VAR)` expansion: a defined VAR is replaced, an undefined one
/// stays as written, `$$` is a literal `$`.
pub fn expand(input: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    let b = input.as_bytes();
    let mut out = String::with_capacity(input.len());
    let mut i = 0;
    let mut literal_start = 0;
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() {
            out.push_str(&input[literal_start..i]);
            match b[i + 1] {
                b'$' => {
                    out.push('$');
                    i += 2;
                }
                b'(' => match input[i + 2..].find(')') {
                    Some(end) => {
                        let name = &input[i + 2..i + 2 + end];
                        match lookup(name) {
                            Some(v) => out.push_str(&v),
                            None => {
                                out.push_str("$(");
                                out.push_str(name);
                                out.push(')');
                            }
                        }
                        i += 2 + end + 1;
                    }
                    None => {
                        out.push_str(&input[i..]);
                        i = b.len();
                    }
                },
                _ => {
                    out.push('$');
                    i += 1;
                }
            }
            literal_start = i;
        } else {
            i += 1;
        }
    }
    if literal_start < b.len() {
        out.push_str(&input[literal_start..]);
    }
    out
}

/// Expand command/args against the final env.
pub fn expand_all(items: &[String], env: &[(String, String)]) -> Vec<String> {
    let lookup = |n: &str| env.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    items.iter().map(|s| expand(s, &lookup)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        EnvFromSource, EnvVar, EnvVarSource, ObjectFieldSelector, PodSpec, SecretEnvSource,
        SecretKeySelector, ServicePort, ServiceSpec,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn map(v: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: BTreeMap<String, String> = v
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn expansion_follows_kubernetes_rules() {
        let f = map(&[("A", "x"), ("B", "y")]);
        assert_eq!(expand("$(A).$(B)", &f), "x.y");
        assert_eq!(expand("$(C)", &f), "$(C)");
        assert_eq!(expand("$$(A)", &f), "$(A)");
        assert_eq!(expand("a$b$", &f), "a$b$");
        assert_eq!(expand("$(A", &f), "$(A");
        assert_eq!(expand("pre $(A) post", &f), "pre x post");
        assert_eq!(expand("ünï $(A)", &f), "ünï x");
    }

    fn pod() -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("main-0".into()),
                namespace: Some("db".into()),
                uid: Some("u-1".into()),
                labels: Some([("app".to_string(), "x".to_string())].into()),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                node_name: Some("node-1".into()),
                ..PodSpec::default()
            }),
            ..Pod::default()
        }
    }

    fn svc(ns: &str, name: &str, ip: &str, port: i32) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                ..ObjectMeta::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some(ip.into()),
                ports: Some(vec![ServicePort {
                    name: Some("https".into()),
                    port,
                    protocol: Some("TCP".into()),
                    ..ServicePort::default()
                }]),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        }
    }

    fn field(name: &str, path: &str) -> EnvVar {
        EnvVar {
            name: name.into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: path.into(),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        }
    }

    fn value(name: &str, v: &str) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: Some(v.into()),
            ..EnvVar::default()
        }
    }

    fn inputs<'a>(
        pod: &'a Pod,
        c: &'a Container,
        services: &'a [Service],
        secrets: &'a Sources,
    ) -> EnvInputs<'a> {
        EnvInputs {
            pod,
            container: c,
            pod_ip: Ipv4Addr::new(198, 18, 1, 2),
            host_ip: Ipv4Addr::new(198, 18, 0, 1),
            services,
            secrets,
            config_maps: secrets,
            allocatable: (2, 8 << 30),
        }
    }

    #[test]
    fn env_resolves_fields_and_expands_earlier_vars() {
        let p = pod();
        let c = Container {
            name: "c".into(),
            env: Some(vec![
                field("INSTANCE", "metadata.name"),
                field("IP", "status.podIP"),
                field("APP", "metadata.labels['app']"),
                value("HOST", "$(INSTANCE).pods.$(NS).svc"),
            ]),
            ..Container::default()
        };
        let none = Sources::new();
        let env = container_env(&inputs(&p, &c, &[], &none)).expect("env");
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("INSTANCE"), Some("main-0"));
        assert_eq!(get("IP"), Some("198.18.1.2"));
        assert_eq!(get("APP"), Some("x"));
        assert_eq!(get("HOST"), Some("main-0.pods.$(NS).svc"));
    }

    #[test]
    fn service_links_include_the_master_service_always() {
        let mut p = pod();
        if let Some(s) = p.spec.as_mut() {
            s.enable_service_links = Some(false);
        }
        let services = [
            svc("default", "kubernetes", "198.19.0.1", 443),
            svc("db", "main-rw", "198.19.0.20", 5432),
        ];
        let env = service_env(&p, &services);
        assert!(env.contains(&("KUBERNETES_SERVICE_HOST".into(), "198.19.0.1".into())));
        assert!(env.contains(&("KUBERNETES_SERVICE_PORT".into(), "443".into())));
        assert!(!env.iter().any(|(k, _)| k.starts_with("MAIN_RW")));
        if let Some(s) = p.spec.as_mut() {
            s.enable_service_links = None;
        }
        let env = service_env(&p, &services);
        assert!(env.contains(&("MAIN_RW_SERVICE_HOST".into(), "198.19.0.20".into())));
        assert!(env.contains(&(
            "MAIN_RW_PORT_5432_TCP".into(),
            "tcp://198.19.0.20:5432".into()
        )));
        assert!(env.contains(&("MAIN_RW_SERVICE_PORT_HTTPS".into(), "5432".into())));
    }

    #[test]
    fn optional_secret_keys_are_skipped_and_required_ones_fail() {
        let p = pod();
        let sel = |optional| EnvVar {
            name: "USER".into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: "s".into(),
                    key: "username".into(),
                    optional,
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        };
        let mk = |v| Container {
            name: "c".into(),
            env: Some(vec![v]),
            ..Container::default()
        };
        let empty = Sources::from([("s".to_string(), BTreeMap::new())]);
        let c = mk(sel(Some(true)));
        let env = container_env(&inputs(&p, &c, &[], &empty)).expect("optional");
        assert!(env.is_empty());
        let c = mk(sel(None));
        assert!(matches!(
            container_env(&inputs(&p, &c, &[], &empty)),
            Err(EnvError::MissingKey { .. })
        ));
        let none = Sources::new();
        assert!(matches!(
            container_env(&inputs(&p, &c, &[], &none)),
            Err(EnvError::MissingObject { .. })
        ));
    }

    #[test]
    fn env_from_applies_prefix_and_env_overrides_it() {
        let p = pod();
        let c = Container {
            name: "c".into(),
            env_from: Some(vec![EnvFromSource {
                prefix: Some("P_".into()),
                secret_ref: Some(SecretEnvSource {
                    name: "s".into(),
                    optional: None,
                }),
                ..EnvFromSource::default()
            }]),
            env: Some(vec![value("P_A", "override")]),
            ..Container::default()
        };
        let s = Sources::from([(
            "s".to_string(),
            BTreeMap::from([
                ("A".to_string(), "1".to_string()),
                ("B".to_string(), "2".to_string()),
            ]),
        )]);
        let env = container_env(&inputs(&p, &c, &[], &s)).expect("env");
        assert_eq!(
            env,
            vec![
                ("P_A".to_string(), "override".to_string()),
                ("P_B".to_string(), "2".to_string())
            ]
        );
    }

    #[test]
    fn quantities_parse() {
        assert_eq!(parse_quantity("500m"), Some(0.5));
        assert_eq!(parse_quantity("1Gi"), Some(1073741824.0));
        assert_eq!(parse_quantity("x"), None);
    }
}
