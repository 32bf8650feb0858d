//! Every manifest we ship parses into its typed Kubernetes object with no
//! field lost (so a misspelled field fails), the chart renders and refuses bad
//! values, every example DbCluster passes the generated CRD schema made strict,
//! and the committed CRD copies equal `tandem crdgen`. Every YAML file we ship
//! is also read by the real YAML 1.1 readers (kubectl, helm) and must mean to
//! them exactly what it means to the YAML 1.2 reader the other tests use.

use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tandem::api::DbCluster;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Every non-empty document of a multi-document YAML stream, as JSON.
fn documents(yaml: &str, origin: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .filter_map(|doc| {
            let value = serde_yaml::Value::deserialize_from(doc, origin);
            (!value.is_null()).then(|| {
                serde_json::to_value(value)
                    .unwrap_or_else(|e| panic!("{origin}: not JSON-compatible: {e}"))
            })
        })
        .collect()
}

trait DeserializeFrom {
    fn deserialize_from(doc: serde_yaml::Deserializer<'_>, origin: &str) -> Self;
}

impl DeserializeFrom for serde_yaml::Value {
    fn deserialize_from(doc: serde_yaml::Deserializer<'_>, origin: &str) -> Self {
        use serde::Deserialize;
        serde_yaml::Value::deserialize(doc).unwrap_or_else(|e| panic!("{origin}: bad YAML: {e}"))
    }
}

/// Paths present in `original` but missing or different after the typed round trip.
fn lost_fields(original: &Value, back: &Value, path: &str, out: &mut Vec<String>) {
    match (original, back) {
        (Value::Object(o), Value::Object(b)) => {
            for (k, v) in o {
                let p = format!("{path}.{k}");
                match b.get(k) {
                    Some(bv) => lost_fields(v, bv, &p, out),
                    None if v.is_null() => {}
                    None => out.push(p),
                }
            }
        }
        (Value::Array(o), Value::Array(b)) if o.len() == b.len() => {
            for (i, (ov, bv)) in o.iter().zip(b).enumerate() {
                lost_fields(ov, bv, &format!("{path}[{i}]"), out);
            }
        }
        (o, b) if o == b => {}
        (Value::Number(o), Value::Number(b)) if o.as_f64() == b.as_f64() => {}
        _ => out.push(format!("{path} ({original} became {back})")),
    }
}

/// Deserialize strictly: fields the type does not know are dropped by serde,
/// so compare the round trip with the original and fail on anything lost.
fn typed<K: DeserializeOwned + Serialize>(doc: &Value, origin: &str) -> K {
    let obj: K = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{origin}: does not deserialize: {e}\n{doc:#}"));
    let back = serde_json::to_value(&obj).unwrap_or_else(|e| panic!("{origin}: {e}"));
    let mut lost = Vec::new();
    lost_fields(doc, &back, "", &mut lost);
    assert!(
        lost.is_empty(),
        "{origin}: unknown or mistyped fields {lost:?}"
    );
    obj
}

/// Check one document by its kind; returns the kind.
fn check_document(doc: &Value, origin: &str) -> String {
    let kind = doc["kind"].as_str().unwrap_or_default().to_string();
    let origin = format!("{origin} ({kind} {})", doc["metadata"]["name"]);
    match kind.as_str() {
        "Namespace" => drop(typed::<Namespace>(doc, &origin)),
        "ServiceAccount" => drop(typed::<ServiceAccount>(doc, &origin)),
        "ClusterRole" => drop(typed::<ClusterRole>(doc, &origin)),
        "ClusterRoleBinding" => drop(typed::<ClusterRoleBinding>(doc, &origin)),
        "Role" => drop(typed::<Role>(doc, &origin)),
        "RoleBinding" => drop(typed::<RoleBinding>(doc, &origin)),
        "Deployment" => drop(typed::<Deployment>(doc, &origin)),
        "Service" => drop(typed::<Service>(doc, &origin)),
        "CustomResourceDefinition" => drop(typed::<CustomResourceDefinition>(doc, &origin)),
        "DbCluster" => drop(typed::<DbCluster>(doc, &origin)),
        other => panic!("{origin}: unexpected kind {other:?}"),
    }
    kind
}

fn yaml_files(dir: &str) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(root().join(dir))
        .unwrap_or_else(|e| panic!("listing {dir}: {e}"))
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .map(|n| format!("{dir}/{n}"))
        .collect();
    files.sort();
    files
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// helm from .cache/helm (`make helm`) or PATH; its absence fails the test.
fn helm() -> PathBuf {
    let cached = root().join(".cache/helm/helm");
    if cached.is_file() {
        return cached;
    }
    if run(Command::new("helm").arg("version")).is_ok() {
        return PathBuf::from("helm");
    }
    panic!("helm not found at .cache/helm/helm nor on PATH: run `make helm` first");
}

fn helm_template(extra: &[&str]) -> Result<String, String> {
    let chart = root().join("charts/tandem-operator");
    run(Command::new(helm())
        .args(["template", "tandem"])
        .arg(&chart)
        .args(["--namespace", "tandem-system", "--include-crds"])
        .args(extra))
}

fn by_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

#[test]
fn crdgen_output_equals_every_committed_crd_copy() {
    let generated = match tandem::crdgen::crd_yaml() {
        Ok(y) => y,
        Err(e) => panic!("crdgen: {e}"),
    };
    for copy in [
        "crds/dbcluster.yaml",
        "charts/tandem-operator/crds/dbcluster.yaml",
        "deploy/base/crd.yaml",
    ] {
        assert!(
            read(copy) == generated,
            "{copy} differs from `tandem crdgen`: run `make crds`"
        );
    }
}

#[test]
fn deploy_base_manifests_are_valid_typed_objects() {
    let mut kinds = Vec::new();
    for file in yaml_files("deploy/base") {
        if file.ends_with("kustomization.yaml") {
            continue;
        }
        for doc in documents(&read(&file), &file) {
            kinds.push(check_document(&doc, &file));
        }
    }
    kinds.sort();
    assert_eq!(
        kinds,
        vec![
            "ClusterRole",
            "ClusterRoleBinding",
            "CustomResourceDefinition",
            "Deployment",
            "Namespace",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount"
        ]
    );
}

#[test]
fn kustomize_renders_the_base_offline() {
    let out = run(Command::new(kubectl())
        .arg("kustomize")
        .arg(root().join("deploy/base")))
    .unwrap_or_else(|e| {
        panic!("kubectl kustomize deploy/base failed (is kubectl installed?): {e}")
    });
    let docs = documents(&out, "kustomize deploy/base");
    for doc in &docs {
        check_document(doc, "kustomize deploy/base");
    }
    let deployment = by_kind(&docs, "Deployment");
    assert_eq!(deployment.len(), 1);
    assert_eq!(deployment[0]["metadata"]["namespace"], "tandem-system");
}

#[test]
fn chart_renders_typed_objects_with_two_leader_elected_replicas() {
    let out = helm_template(&[]).unwrap_or_else(|e| panic!("helm template failed: {e}"));
    let docs = documents(&out, "helm template");
    let mut kinds: Vec<String> = docs
        .iter()
        .map(|d| check_document(d, "helm template"))
        .collect();
    kinds.sort();
    kinds.dedup();
    for kind in [
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "Deployment",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
    ] {
        assert!(kinds.iter().any(|k| k == kind), "chart renders no {kind}");
    }
    let deployment: Deployment = typed(by_kind(&docs, "Deployment")[0], "chart Deployment");
    let spec = deployment.spec;
    assert_eq!(spec.replicas, Some(2));
    let pod = spec.template.spec.unwrap_or_default();
    let args = pod.containers[0].args.clone().unwrap_or_default();
    assert!(args.contains(&"operator".to_string()), "{args:?}");
    assert!(
        args.contains(&"--leader-elect=true".to_string()),
        "{args:?}"
    );
    let env: Vec<String> = pod.containers[0]
        .env
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert!(env.contains(&"TANDEM_IDENTITY".to_string()));
    assert!(env.contains(&"TANDEM_LEASE_NAMESPACE".to_string()));
}

#[test]
fn chart_and_kustomize_base_grant_the_same_rbac() {
    let chart = documents(
        &helm_template(&[]).unwrap_or_else(|e| panic!("helm template failed: {e}")),
        "helm template",
    );
    let base = documents(&read("deploy/base/rbac.yaml"), "deploy/base/rbac.yaml");
    for kind in ["ClusterRole", "Role"] {
        let rules = |docs: &[Value]| by_kind(docs, kind).first().map(|d| d["rules"].clone());
        assert_eq!(rules(&chart), rules(&base), "{kind} rules differ");
        assert!(rules(&chart).is_some(), "no {kind}");
    }
}

#[test]
fn chart_refuses_values_the_schema_does_not_allow() {
    assert!(helm_template(&["--set", "logFormat=text", "--set", "replicaCount=3"]).is_ok());
    // Every duration the binary accepts, the chart accepts too.
    assert!(
        helm_template(&["--set", "requeueInterval=1h30m"]).is_ok(),
        "the chart refuses requeueInterval=1h30m"
    );
    for bad in [
        "replicaCount=two",
        "logFormat=xml",
        "replicCount=2",
        "leaderElection.leaseDuration=soon",
    ] {
        let result = helm_template(&["--set", bad]);
        assert!(result.is_err(), "helm template accepted --set {bad}");
    }
}

/// Make a CRD schema strict the way the API server's pruning is: unknown
/// fields fail (additionalProperties: false where properties are listed), and
/// `nullable` becomes a null type.
fn strict(schema: &mut Value) {
    let Value::Object(map) = schema else {
        if let Value::Array(items) = schema {
            items.iter_mut().for_each(strict);
        }
        return;
    };
    let open = map.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    if map.contains_key("properties") && !map.contains_key("additionalProperties") && !open {
        map.insert("additionalProperties".into(), Value::Bool(false));
    }
    let nullable = map.get("nullable") == Some(&Value::Bool(true));
    if map.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true))
        && !map.contains_key("type")
    {
        let types = if nullable {
            serde_json::json!(["integer", "string", "null"])
        } else {
            serde_json::json!(["integer", "string"])
        };
        map.insert("type".into(), types);
    } else if nullable {
        if let Some(Value::String(t)) = map.get("type").cloned() {
            map.insert("type".into(), serde_json::json!([t, "null"]));
        }
    }
    for (key, value) in map.iter_mut() {
        // Keys under `properties` are field names, not keywords.
        if key == "properties" {
            if let Value::Object(props) = value {
                props.values_mut().for_each(strict);
            }
        } else {
            strict(value);
        }
    }
}

fn dbcluster_validator() -> jsonschema::Validator {
    let crd = documents(&read("crds/dbcluster.yaml"), "crds/dbcluster.yaml")
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("crds/dbcluster.yaml is empty"));
    let mut schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone();
    assert!(schema.is_object(), "CRD has no openAPIV3Schema");
    // The API server adds these to every schema implicitly.
    for (field, ty) in [
        ("apiVersion", "string"),
        ("kind", "string"),
        ("metadata", "object"),
    ] {
        if schema["properties"].get(field).is_none() {
            schema["properties"][field] = serde_json::json!({"type": ty});
        }
    }
    strict(&mut schema);
    jsonschema::validator_for(&schema).unwrap_or_else(|e| panic!("schema does not compile: {e}"))
}

fn schema_errors(validator: &jsonschema::Validator, doc: &Value) -> Vec<String> {
    validator
        .iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect()
}

#[test]
fn example_dbclusters_pass_the_strict_crd_schema_and_semantic_validation() {
    let validator = dbcluster_validator();
    let files = yaml_files("deploy/examples");
    let names: Vec<&str> = files
        .iter()
        .map(|f| f.rsplit('/').next().unwrap_or_default())
        .collect();
    assert_eq!(
        names,
        vec!["learner.yaml", "minimal.yaml", "paused.yaml", "sync.yaml"]
    );
    let defaults = tandem::controller::validate::Defaults {
        postgres_image: "example.org/pg:17".into(),
    };
    for file in &files {
        for doc in documents(&read(file), file) {
            let errors = schema_errors(&validator, &doc);
            assert!(errors.is_empty(), "{file}: {errors:?}");
            let mut dc: DbCluster = typed(&doc, file);
            dc.metadata.namespace = Some("db".into());
            dc.metadata.uid = Some("uid".into());
            if let Err(e) = tandem::controller::validate::validate(&dc, &defaults) {
                panic!("{file}: refused by the operator: {e}");
            }
        }
    }
}

/// A change that makes a DbCluster invalid.
type Mutation = fn(&mut Value);

#[test]
fn misspelled_or_mistyped_dbcluster_fields_fail_the_schema() {
    let validator = dbcluster_validator();
    let good = documents(&read("deploy/examples/minimal.yaml"), "minimal").remove(0);
    assert!(schema_errors(&validator, &good).is_empty());
    let cases: [(&str, Mutation); 9] = [
        ("misspelled spec field", |d| {
            d["spec"]["instance"] = 3.into()
        }),
        ("misspelled nested field", |d| {
            d["spec"]["storage"]["sizee"] = "1Gi".into()
        }),
        ("string for an integer", |d| {
            d["spec"]["instances"] = "three".into()
        }),
        ("value outside the enum", |d| {
            d["spec"]["replication"] = serde_json::json!({"mode": "semi"})
        }),
        ("instances out of range", |d| {
            d["spec"]["instances"] = 17.into()
        }),
        ("malformed duration", |d| {
            d["spec"]["failover"] = serde_json::json!({"detectionTimeout": "5"})
        }),
        // Values the operator could not deserialize: the API server must refuse them.
        ("duration too large for the operator", |d| {
            d["spec"]["failover"] = serde_json::json!({"delay": "99999999999999999999s"})
        }),
        ("overlong duration", |d| {
            d["spec"]["switchover"] = serde_json::json!({"shutdownTimeout": "1s".repeat(20)})
        }),
        ("null maxLagBytes", |d| {
            d["spec"]["switchover"] = serde_json::json!({"maxLagBytes": null})
        }),
    ];
    for (what, mutate) in cases {
        let mut doc = good.clone();
        mutate(&mut doc);
        assert!(
            !schema_errors(&validator, &doc).is_empty(),
            "the schema accepted a DbCluster with a {what}: {doc}"
        );
    }
    // And the typed round trip catches a misspelling too.
    let mut doc = good.clone();
    doc["spec"]["pausd"] = true.into();
    let caught = std::panic::catch_unwind(|| drop(typed::<DbCluster>(&doc, "misspelled")));
    assert!(caught.is_err(), "typed round trip accepted spec.pausd");
}

/// kubectl from `KUBECTL` or PATH; its absence fails the test.
fn kubectl() -> PathBuf {
    PathBuf::from(std::env::var_os("KUBECTL").unwrap_or_else(|| "kubectl".into()))
}

/// The documents of a YAML stream as kubectl reads it (YAML 1.1, as helm
/// and the API server do), through an offline no-op edit: removing an
/// annotation that is not there.
fn kubectl_reads(file: &Path) -> Result<Vec<Value>, String> {
    let out = run(Command::new(kubectl())
        .args(["annotate", "--local", "-o", "json", "-f"])
        .arg(file)
        .arg("tandem.dev/yaml-check-"))?;
    let mut docs = Vec::new();
    for doc in serde_json::Deserializer::from_str(&out).into_iter::<Value>() {
        let mut doc = doc.map_err(|e| format!("kubectl printed no JSON: {e}"))?;
        // The no-op edit leaves an empty annotations map (and metadata) behind.
        if let Some(meta) = doc.get_mut("metadata").and_then(Value::as_object_mut) {
            if meta.get("annotations") == Some(&serde_json::json!({})) {
                meta.remove("annotations");
            }
        }
        if doc.get("metadata") == Some(&serde_json::json!({})) {
            if let Some(map) = doc.as_object_mut() {
                map.remove("metadata");
            }
        }
        docs.push(doc);
    }
    Ok(docs)
}

/// Single-document YAML files that are not Kubernetes objects (values.yaml,
/// Chart.yaml, kustomization's own files) as helm reads them: through its
/// `fromYaml`, the YAML 1.1 reader it uses for values too.
fn helm_reads(files: &[String]) -> Vec<(String, Value)> {
    let chart = tandem_testkit::TestDir::new("helm-reads");
    let dir = chart.path();
    std::fs::create_dir_all(dir.join("templates")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::create_dir_all(dir.join("files")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        dir.join("Chart.yaml"),
        "apiVersion: v2\nname: yaml-check\nversion: 0.0.1\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        dir.join("templates/read.txt"),
        "{{- range $i, $path := .Values.files }}\n\
         {{ $.Files.Get (printf \"files/%d.yaml\" $i) | fromYaml | toJson }}\n\
         {{- end }}\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut values = String::from("files:\n");
    for (i, file) in files.iter().enumerate() {
        std::fs::copy(root().join(file), dir.join(format!("files/{i}.yaml")))
            .unwrap_or_else(|e| panic!("copying {file}: {e}"));
        values.push_str(&format!("- {}\n", serde_json::json!(file)));
    }
    std::fs::write(dir.join("values.yaml"), values).unwrap_or_else(|e| panic!("{e}"));
    let out = run(Command::new(helm()).arg("template").arg("y").arg(dir))
        .unwrap_or_else(|e| panic!("helm template of the YAML reader chart failed: {e}"));
    let read: Vec<Value> = out
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("helm printed {l}: {e}")))
        .collect();
    assert_eq!(read.len(), files.len(), "helm read {out}");
    files.iter().cloned().zip(read).collect()
}

/// Paths where two readings of the same YAML differ (numbers compare by value).
fn differences(a: &Value, b: &Value, path: &str, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for key in x.keys().chain(y.keys().filter(|k| !x.contains_key(*k))) {
                let p = format!("{path}.{key}");
                match (x.get(key), y.get(key)) {
                    (Some(xv), Some(yv)) => differences(xv, yv, &p, out),
                    (xv, yv) => out.push(format!("{p}: {xv:?} vs {yv:?}")),
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (xv, yv)) in x.iter().zip(y).enumerate() {
                differences(xv, yv, &format!("{path}[{i}]"), out);
            }
        }
        (Value::Number(x), Value::Number(y)) if x.as_f64() == y.as_f64() => {}
        (x, y) if x == y => {}
        (x, y) => out.push(format!("{path}: YAML 1.2 reads {x}, YAML 1.1 reads {y}")),
    }
}

/// Every YAML file in the tree (committed or new), except Go templates
/// (checked rendered) and GitHub workflows (read by GitHub's own YAML 1.2
/// parser, where `on:` is meant as the key "on").
fn shipped_yaml_files() -> Vec<String> {
    let out = run(Command::new("git").arg("-C").arg(root()).args([
        "ls-files",
        "--cached",
        "--others",
        "--exclude-standard",
    ]))
    .unwrap_or_else(|e| panic!("git ls-files: {e}"));
    out.lines()
        .filter(|f| f.ends_with(".yaml") || f.ends_with(".yml"))
        .filter(|f| !f.starts_with(".github/") && !f.contains("/templates/"))
        .filter(|f| root().join(f).is_file())
        .map(str::to_string)
        .collect()
}

fn assert_same_under_yaml_1_1(origin: &str, yaml12: &[Value], yaml11: &[Value]) {
    assert_eq!(
        yaml12.len(),
        yaml11.len(),
        "{origin}: document count differs between YAML 1.2 and kubectl"
    );
    let mut diffs = Vec::new();
    for (a, b) in yaml12.iter().zip(yaml11) {
        differences(a, b, "", &mut diffs);
    }
    assert!(
        diffs.is_empty(),
        "{origin} means something else to kubectl/helm (YAML 1.1) than intended: {diffs:#?}\n\
         quote the value (\"on\", \"yes\", \"no\", \"y\", \"off\" are booleans in YAML 1.1)"
    );
}

#[test]
fn every_shipped_yaml_file_means_the_same_to_kubectl_and_helm() {
    let files = shipped_yaml_files();
    for must in [
        "crds/dbcluster.yaml",
        "charts/tandem-operator/values.yaml",
        "deploy/examples/sync.yaml",
        "examples/local/cluster.yaml",
    ] {
        assert!(
            files.iter().any(|f| f == must),
            "{must} not found: {files:?}"
        );
    }
    let mut not_objects = Vec::new();
    for file in &files {
        let docs = documents(&read(file), file);
        if docs
            .iter()
            .all(|d| d.get("apiVersion").is_some() && d.get("kind").is_some())
        {
            let yaml11 = kubectl_reads(&root().join(file)).unwrap_or_else(|e| {
                panic!(
                    "kubectl ({}) could not read {file}: {e}",
                    kubectl().display()
                )
            });
            assert_same_under_yaml_1_1(file, &docs, &yaml11);
        } else {
            assert_eq!(
                docs.len(),
                1,
                "{file}: a multi-document file of non-objects"
            );
            not_objects.push(file.clone());
        }
    }
    for (file, yaml11) in helm_reads(&not_objects) {
        let docs = documents(&read(&file), &file);
        assert_same_under_yaml_1_1(&file, &docs, &[yaml11]);
    }
    // What helm renders from the templates goes to kubectl and the API server too.
    let rendered = helm_template(&[]).unwrap_or_else(|e| panic!("helm template failed: {e}"));
    let tmp = tempfile::NamedTempFile::new().unwrap_or_else(|e| panic!("temp file: {e}"));
    std::fs::write(tmp.path(), &rendered).unwrap_or_else(|e| panic!("{e}"));
    let yaml11 = kubectl_reads(tmp.path()).unwrap_or_else(|e| panic!("kubectl: {e}"));
    assert_same_under_yaml_1_1(
        "helm template",
        &documents(&rendered, "helm template"),
        &yaml11,
    );
}

#[test]
fn kubectl_reads_the_crd_synchronous_commit_default_and_enum_as_strings() {
    for copy in [
        "crds/dbcluster.yaml",
        "charts/tandem-operator/crds/dbcluster.yaml",
        "deploy/base/crd.yaml",
    ] {
        let crd = kubectl_reads(&root().join(copy))
            .unwrap_or_else(|e| panic!("kubectl could not read {copy}: {e}"))
            .remove(0);
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let replication = &spec["properties"]["replication"];
        assert_eq!(
            replication["default"]["synchronousCommit"],
            Value::from("on"),
            "{copy}: replication.default"
        );
        let field = &replication["properties"]["synchronousCommit"];
        assert_eq!(field["default"], Value::from("on"), "{copy}: default");
        assert_eq!(
            field["enum"],
            serde_json::json!(["on", "remote_write", "remote_apply", "local"]),
            "{copy}: enum"
        );
    }
}

/// Where the CRD lets a field be null, below `schema` (array items skipped:
/// their objects need required fields), as paths of property names.
fn nullable_paths(schema: &Value, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    if schema["nullable"] == Value::Bool(true) && !path.is_empty() {
        out.push(path.clone());
    }
    if let Some(props) = schema["properties"].as_object() {
        for (name, sub) in props {
            path.push(name.clone());
            nullable_paths(sub, path, out);
            path.pop();
        }
    }
}

#[test]
fn every_field_the_crd_lets_be_null_deserializes_from_null() {
    let crd = documents(&read("crds/dbcluster.yaml"), "crds/dbcluster.yaml").remove(0);
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let mut paths = Vec::new();
    // Users write the spec; the status is written by the operator alone.
    nullable_paths(
        &schema["properties"]["spec"],
        &mut vec!["spec".to_string()],
        &mut paths,
    );
    assert!(paths.iter().any(|p| p == &["spec", "image"]), "{paths:?}");
    let mut unreadable = Vec::new();
    for path in &paths {
        let mut doc = serde_json::json!({
            "apiVersion": "tandem.dev/v1alpha1",
            "kind": "DbCluster",
            "metadata": {"name": "main"},
            "spec": {},
        });
        let mut at = &mut doc;
        for (i, key) in path.iter().enumerate() {
            if i + 1 == path.len() {
                at[key.as_str()] = Value::Null;
            } else {
                if !at[key.as_str()].is_object() {
                    at[key.as_str()] = serde_json::json!({});
                }
                at = &mut at[key.as_str()];
            }
        }
        if let Err(e) = serde_json::from_value::<DbCluster>(doc) {
            unreadable.push(format!("{}: {e}", path.join(".")));
        }
    }
    assert!(
        unreadable.is_empty(),
        "the CRD lets these be null but the operator cannot read null there \
         (drop `nullable` or accept null): {unreadable:#?}"
    );
}

#[test]
fn the_crd_refuses_a_change_of_spec_storage() {
    // volumeClaimTemplates are immutable: a changed storage would fail every
    // StatefulSet apply, so the API server refuses the change instead.
    let crd = documents(&read("crds/dbcluster.yaml"), "crds/dbcluster.yaml").remove(0);
    let storage = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        ["properties"]["storage"];
    let rules = storage["x-kubernetes-validations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        rules.iter().any(|r| r["rule"] == "self == oldSelf"
            && r["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("spec.storage is immutable"))),
        "no transition rule on spec.storage: {storage:#}"
    );
}

/// Image names `make docker-build` tags.
fn built_images() -> Vec<String> {
    let makefile = read("Makefile");
    let mut images: Vec<String> = makefile
        .lines()
        .filter(|l| l.contains("docker build"))
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            words.find(|w| *w == "-t")?;
            words.next().map(str::to_string)
        })
        .collect();
    images.sort();
    images
}

fn container_images(docs: &[Value], origin: &str) -> (String, String) {
    let deployment: Deployment = typed(by_kind(docs, "Deployment")[0], origin);
    let pod = deployment.spec.template.spec.unwrap_or_default();
    let container = &pod.containers[0];
    let postgres = container
        .env
        .clone()
        .unwrap_or_default()
        .into_iter()
        .find(|e| e.name == "TANDEM_POSTGRES_IMAGE")
        .and_then(|e| e.value)
        .unwrap_or_else(|| panic!("{origin}: no TANDEM_POSTGRES_IMAGE"));
    (container.image.clone().unwrap_or_default(), postgres)
}

#[test]
fn default_installs_use_the_images_make_docker_build_produces() {
    let built = built_images();
    assert_eq!(built.len(), 2, "make docker-build tags {built:?}");
    let chart = documents(
        &helm_template(&[]).unwrap_or_else(|e| panic!("helm template failed: {e}")),
        "helm template",
    );
    let base = run(Command::new(kubectl())
        .arg("kustomize")
        .arg(root().join("deploy/base")))
    .unwrap_or_else(|e| panic!("kubectl kustomize deploy/base: {e}"));
    let base = documents(&base, "kustomize deploy/base");
    for (origin, docs) in [("chart", &chart), ("deploy/base", &base)] {
        let (operator, postgres) = container_images(docs, origin);
        for image in [&operator, &postgres] {
            assert!(
                built.contains(image),
                "{origin} defaults to {image}, which `make docker-build` does not build ({built:?})"
            );
        }
    }
    let help = run(Command::new(env!("CARGO_BIN_EXE_tandem")).args(["operator", "--help"]))
        .unwrap_or_else(|e| panic!("tandem operator --help: {e}"));
    let default = help
        .split("--postgres-image")
        .nth(1)
        .and_then(|rest| rest.split("[default: ").nth(1))
        .and_then(|rest| rest.split(']').next())
        .unwrap_or_else(|| panic!("no --postgres-image default in:\n{help}"));
    assert!(
        built.iter().any(|b| b == default),
        "--postgres-image defaults to {default}, not built by make docker-build ({built:?})"
    );
}

#[test]
fn the_chart_notes_snippet_runs_as_pasted_into_bash() {
    let notes = read("charts/tandem-operator/templates/NOTES.txt");
    let lines: Vec<&str> = notes.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.contains("<<"))
        .unwrap_or_else(|| panic!("NOTES.txt has no heredoc"));
    let end = lines[start..]
        .iter()
        .position(|l| *l == "YAML")
        .map(|i| start + i)
        .unwrap_or_else(|| {
            panic!("the heredoc of NOTES.txt has no unindented YAML terminator: bash waits forever")
        });
    let snippet = lines[start..=end].join("\n");
    assert!(!snippet.contains("{{"), "template actions in the snippet");
    // The user's kubectl, offline: print what it would send.
    let script = format!(
        "kubectl() {{ command \"$KUBECTL_BIN\" annotate --local -o json -f - tandem.dev/yaml-check-; }}\n{snippet}\n"
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .env("KUBECTL_BIN", kubectl())
        .output()
        .unwrap_or_else(|e| panic!("bash: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.is_empty(), "{stderr}");
    let doc: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("kubectl printed no JSON ({e})"));
    assert_eq!(doc["kind"], "DbCluster");
    assert_eq!(doc["spec"]["instances"], 3);
}
