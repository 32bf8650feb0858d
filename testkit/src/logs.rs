//! The tail of a log, for a failing test's message or dump: the last lines
//! of a text (pure) or of a file (reads it).

use std::path::Path;

/// The last `lines` lines of `text` (all of it when shorter).
pub fn last_lines(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `==> path <==` and the last `lines` lines of the file (or why it cannot be read).
pub fn file_tail(path: &Path, lines: usize) -> String {
    let body = match std::fs::read(path) {
        Ok(bytes) => last_lines(&String::from_utf8_lossy(&bytes), lines),
        Err(e) => format!("(cannot read: {e})"),
    };
    format!("==> {} <==\n{body}", path.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_lines_keeps_the_end() {
        assert_eq!(last_lines("a\nb\nc\n", 2), "b\nc");
        assert_eq!(last_lines("a\nb", 5), "a\nb");
        assert_eq!(last_lines("", 3), "");
    }

    #[test]
    fn file_tail_names_the_file_even_when_it_is_missing() {
        let dir = crate::TestDir::new("kit-log");
        let path = dir.path().join("x.log");
        assert!(file_tail(&path, 3).contains("cannot read"));
        std::fs::write(&path, "1\n2\n3\n4\n").expect("write log");
        assert_eq!(
            file_tail(&path, 2),
            format!("==> {} <==\n3\n4", path.display())
        );
    }
}
