//! tandem-core stays pure. Cargo already refuses any crate that is not a
//! dependency; these tests keep it that way: `Cargo.toml` names no crate that
//! does I/O (kube, tokio…), and no source file uses the std modules Cargo
//! cannot keep out (files, sockets, processes, threads, the environment, the
//! clock).

use std::path::{Path, PathBuf};

/// Crates tandem-core must not depend on.
const FORBIDDEN_CRATES: &[&str] = &[
    "kube",
    "k8s-openapi",
    "tokio",
    "tokio-postgres",
    "reqwest",
    "axum",
    "hyper",
    "rand",
    "nix",
    "tracing",
];

/// Identifiers and paths of std and jiff the sources must not use (comments are not scanned).
const FORBIDDEN: &[&str] = &[
    "SystemTime",
    "Instant",
    "thread_rng",
    "std::fs",
    "std::net",
    "std::process",
    "std::thread",
    "std::env",
    "Timestamp::now",
    "Zoned::now",
];

/// Source text without `//` comments.
fn code_of(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Forbidden names used in `code`.
fn violations(code: &str) -> Vec<&'static str> {
    let code = code_of(code);
    let idents: Vec<&str> = code
        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|s| !s.is_empty())
        .collect();
    let compact: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    FORBIDDEN
        .iter()
        .copied()
        .filter(|f| {
            if f.contains("::") {
                compact.contains(f)
            } else {
                idents.contains(f)
            }
        })
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The crate names under `[dependencies]` of a Cargo.toml.
fn dependencies(manifest: &str) -> Vec<String> {
    let mut section = "";
    let mut out = Vec::new();
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
        } else if section == "[dependencies]" && !line.starts_with('#') {
            if let Some((name, _)) = line.split_once('=') {
                out.push(name.trim().trim_end_matches(".workspace").to_string());
            }
        }
    }
    out
}

#[test]
fn core_depends_on_no_io_crate() {
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap();
    let deps = dependencies(&manifest);
    assert!(deps.contains(&"serde".to_string()), "parsed {deps:?}");
    let bad: Vec<&String> = deps
        .iter()
        .filter(|d| FORBIDDEN_CRATES.contains(&d.as_str()))
        .collect();
    assert!(bad.is_empty(), "tandem-core must stay pure: {bad:?}");
}

#[test]
fn dependency_scan_reads_the_dependencies_section() {
    let manifest = "[package]\nname = \"x\"\n[dependencies]\nserde.workspace = true\ntokio = { version = \"1\" }\n# kube = \"5\"\n[dev-dependencies]\nproptest = \"1\"\n";
    assert_eq!(dependencies(manifest), ["serde", "tokio"]);
}

#[test]
fn core_sources_name_no_io_clock_or_randomness() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&dir, &mut files);
    assert!(files.len() >= 10, "found only {files:?}");
    let mut bad = Vec::new();
    for f in files.iter().filter(|f| !f.ends_with("tests/purity.rs")) {
        let text = std::fs::read_to_string(f).unwrap();
        for v in violations(&text) {
            bad.push(format!("{} uses {v}", f.display()));
        }
    }
    assert!(bad.is_empty(), "tandem-core must stay pure: {bad:#?}");
}

#[test]
fn purity_scan_catches_forbidden_names() {
    assert_eq!(
        violations("let t = std::time::Instant::now();"),
        ["Instant"]
    );
    assert_eq!(
        violations("let t = std::time::SystemTime::now();"),
        ["SystemTime"]
    );
    assert_eq!(violations("let f = std :: fs :: read(p);"), ["std::fs"]);
    assert_eq!(
        violations("let now = jiff::Timestamp::now();"),
        ["Timestamp::now"]
    );
    assert!(violations("// no std::fs here\nlet instantly = 1;").is_empty());
}
