//! The engine stays pure: no file in src/engine names a crate or std module
//! that does I/O, reads a clock or draws random numbers.

use std::path::{Path, PathBuf};

/// Identifiers and paths the engine must not use (comments are not scanned).
const FORBIDDEN: &[&str] = &[
    "kube",
    "k8s_openapi",
    "tokio",
    "tokio_postgres",
    "reqwest",
    "axum",
    "hyper",
    "rand",
    "nix",
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

#[test]
fn engine_sources_name_no_io_clock_or_randomness() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/engine");
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
    assert!(bad.is_empty(), "the engine must stay pure: {bad:#?}");
}

#[test]
fn purity_scan_catches_forbidden_names() {
    assert_eq!(violations("use tokio::time::sleep;"), ["tokio"]);
    assert_eq!(
        violations("let t = std::time::SystemTime::now();"),
        ["SystemTime"]
    );
    assert_eq!(violations("let f = std :: fs :: read(p);"), ["std::fs"]);
    assert_eq!(
        violations("let now = jiff::Timestamp::now();"),
        ["Timestamp::now"]
    );
    assert!(violations("// no kube, no tokio here\nlet kubelet = 1;").is_empty());
}
