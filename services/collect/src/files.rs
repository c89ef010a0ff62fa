//! Local files and directories: text and Markdown as they are, HTML as its main text, JSON
//! lines by their text field, source code by extension. Directories are walked respecting
//! `.gitignore`; hidden files are skipped.

use crate::{Collected, Document, html};
use std::path::Path;

#[derive(Clone, Debug)]
pub struct FileOptions {
    /// Larger files are skipped.
    pub max_bytes: u64,
    /// The field of a JSON line that holds its text; `None` keeps each line whole, as a JSON
    /// record (conversations, preference pairs, evaluation cases).
    pub text_field: Option<String>,
}

impl Default for FileOptions {
    fn default() -> Self {
        FileOptions {
            max_bytes: 16 << 20,
            text_field: Some("text".into()),
        }
    }
}

/// What a file's extension says it holds.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Text,
    Html,
    JsonLines,
    Code,
}

const CODE: &[&str] = &[
    "rs", "py", "js", "ts", "tsx", "jsx", "go", "java", "kt", "c", "h", "cc", "cpp", "hpp", "cs",
    "rb", "php", "swift", "scala", "sh", "bash", "sql", "toml", "yaml", "yml", "css", "lua", "hs",
    "ml", "ex", "exs", "r", "jl", "proto",
];

fn kind(path: &Path) -> Option<Kind> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    match ext.as_str() {
        "txt" | "md" | "markdown" | "rst" | "text" => Some(Kind::Text),
        "html" | "htm" | "xhtml" => Some(Kind::Html),
        "jsonl" | "ndjson" => Some(Kind::JsonLines),
        e if CODE.contains(&e) => Some(Kind::Code),
        _ => None,
    }
}

/// Collects a file, or every file under a directory.
pub fn collect(path: &Path, options: &FileOptions) -> Result<Collected, crate::CollectError> {
    let meta = std::fs::metadata(path).map_err(|source| crate::CollectError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut collected = Collected::default();
    if meta.is_file() {
        read(path, &path.display().to_string(), options, &mut collected);
        return Ok(collected);
    }
    walk(path, options, &mut collected, |_| None);
    Ok(collected)
}

/// Walks `root` (respecting `.gitignore`, skipping hidden files and what `exclude` names),
/// reading every file into `collected` with ids relative to `root`.
pub(crate) fn walk(
    root: &Path,
    options: &FileOptions,
    collected: &mut Collected,
    exclude: impl Fn(&Path) -> Option<&'static str>,
) {
    let mut entries: Vec<_> = ignore::WalkBuilder::new(root)
        .require_git(false)
        .build()
        .collect();
    entries.sort_by(|a, b| match (a, b) {
        (Ok(a), Ok(b)) => a.path().cmp(b.path()),
        _ => std::cmp::Ordering::Equal,
    });
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                collected.skip(root.display().to_string(), format!("unreadable: {e}"));
                continue;
            }
        };
        if !entry.file_type().is_some_and(|t| t.is_file()) {
            continue;
        }
        let path = entry.path();
        let id = path
            .strip_prefix(root)
            .unwrap_or(path)
            .display()
            .to_string();
        if let Some(reason) = exclude(path) {
            collected.skip(id, reason);
            continue;
        }
        read(path, &id, options, collected);
    }
}

fn read(path: &Path, id: &str, options: &FileOptions, collected: &mut Collected) {
    let Some(kind) = kind(path) else {
        collected.skip(id, "unsupported file type");
        return;
    };
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if size > options.max_bytes {
        collected.skip(
            id,
            format!("too large ({size} bytes > {})", options.max_bytes),
        );
        return;
    }
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) => {
            collected.skip(id, format!("unreadable: {e}"));
            return;
        }
    };
    if bytes[..bytes.len().min(8192)].contains(&0) {
        collected.skip(id, "binary");
        return;
    }
    let Ok(text) = String::from_utf8(bytes) else {
        collected.skip(id, "invalid UTF-8");
        return;
    };
    let source = path.display().to_string();
    let texts: Vec<(String, Result<String, String>)> = match kind {
        Kind::Text | Kind::Code => vec![(id.to_string(), Ok(text))],
        Kind::Html => vec![(id.to_string(), html::parse(&text).map(|page| page.text))],
        Kind::JsonLines => text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, line)| {
                let value = serde_json::from_str::<serde_json::Value>(line).ok();
                let text = match &options.text_field {
                    Some(field) => value
                        .and_then(|v| v.get(field)?.as_str().map(str::to_string))
                        .ok_or_else(|| format!("not JSON with a string {field:?}")),
                    None => value
                        .filter(serde_json::Value::is_object)
                        .map(|v| v.to_string())
                        .ok_or_else(|| "not a JSON object".to_string()),
                };
                (format!("{id}:{}", i + 1), text)
            })
            .collect(),
    };
    for (id, text) in texts {
        match text {
            Ok(text) if text.trim().is_empty() => collected.skip(id, "no text"),
            Ok(text) => collected.documents.push(Document {
                id,
                text,
                source: source.clone(),
            }),
            Err(reason) => collected.skip(id, reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_each_kind_and_skips_what_it_cannot() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("a.txt"), "plain text").unwrap();
        std::fs::write(d.join("b.md"), "# Title\nbody").unwrap();
        std::fs::write(
            d.join("c.html"),
            "<html><body><nav>menu</nav><p>Main text.</p></body></html>",
        )
        .unwrap();
        std::fs::write(
            d.join("d.jsonl"),
            "{\"text\":\"first\"}\n{\"oops\":1}\nnot json\n\n{\"text\":\"second\"}\n",
        )
        .unwrap();
        std::fs::write(d.join("e.rs"), "fn main() {}\n").unwrap();
        std::fs::write(d.join("f.png"), [0x89, b'P', b'N', b'G']).unwrap();
        std::fs::write(d.join("g.txt"), [0u8, 1, 2, 3]).unwrap();
        std::fs::write(d.join("h.txt"), [b'c', b'a', b'f', 0xe9]).unwrap();
        std::fs::write(d.join("i.txt"), "x".repeat(2000)).unwrap();
        std::fs::write(d.join("ignored.txt"), "never read").unwrap();
        std::fs::write(d.join(".gitignore"), "ignored.txt\n").unwrap();
        std::fs::create_dir(d.join("sub")).unwrap();
        std::fs::write(d.join("sub/j.txt"), "nested").unwrap();
        let options = FileOptions {
            max_bytes: 1000,
            ..Default::default()
        };
        let collected = collect(d, &options).unwrap();
        let docs: Vec<(&str, &str)> = collected
            .documents
            .iter()
            .map(|d| (d.id.as_str(), d.text.as_str()))
            .collect();
        assert_eq!(
            docs,
            vec![
                ("a.txt", "plain text"),
                ("b.md", "# Title\nbody"),
                ("c.html", "Main text."),
                ("d.jsonl:1", "first"),
                ("d.jsonl:5", "second"),
                ("e.rs", "fn main() {}\n"),
                ("sub/j.txt", "nested"),
            ]
        );
        let skipped = collected.skip_reasons();
        assert_eq!(
            skipped,
            vec![
                ("d.jsonl:2", "not JSON with a string \"text\""),
                ("d.jsonl:3", "not JSON with a string \"text\""),
                ("f.png", "unsupported file type"),
                ("g.txt", "binary"),
                ("h.txt", "invalid UTF-8"),
                ("i.txt", "too large (2000 bytes > 1000)"),
            ]
        );
        assert!(collect(&d.join("missing"), &options).is_err());
    }
}
