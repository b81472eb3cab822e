//! The module layers, checked: every `crate::…` path in the library's source
//! must name a module of a strictly lower layer than the file's own (or the
//! file's own module). A new module goes into [`LAYERS`]; an import that
//! points upwards (the start of a cycle) fails `cargo test`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The layers, lowest first. A module may use modules of lower layers only;
/// modules of one layer do not use each other. Nested modules listed here
/// (`dlq::letter`) form a layer of their own, apart from their parent.
const LAYERS: &[&[&str]] = &[
    // Foundations: no domain types.
    &["envelope", "signature", "backoff", "streams", "telemetry"],
    &["model", "shard"],
    &["normalize", "outbound"],
    &["plan"],
    &["events"],
    &["dlq::letter", "audit", "config"],
    &["store"],
    &["queue", "graph", "spool"],
    &["ingest"],
    &["relay", "feed"],
    &["bus", "jobs"],
    &["pipeline", "cache", "webhooks", "media", "leads", "sync"],
    &["worker", "direct", "dlq", "status", "sender", "drafts"],
    &["http"],
    &["service"],
];

/// Modules outside the graph (test-only checks, crate root).
const EXEMPT: &[&str] = &["layers"];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// The most specific listed module a path (`dlq::letter::DeadLetter`)
/// belongs to.
fn module_of(path: &str) -> String {
    let segments: Vec<&str> = path.split("::").collect();
    for n in (1..=segments.len()).rev() {
        let candidate = segments[..n].join("::");
        if layer_of(&candidate).is_some() {
            return candidate;
        }
    }
    segments[0].to_string()
}

/// The module a source file belongs to (`store/sql.rs` → `store`,
/// `dlq/letter.rs` → `dlq::letter`).
fn module_of_file(relative: &Path) -> String {
    let mut parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if let Some(last) = parts.last_mut() {
        *last = last.trim_end_matches(".rs").to_string();
        if last == "mod" {
            parts.pop();
        }
    }
    module_of(&parts.join("::"))
}

/// Source without comments and string literals, so doc links and text do
/// not count as imports.
fn code_only(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let chars: Vec<char> = source.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            i += 2;
            while i + 1 < chars.len() && !(chars[i] == '*' && chars[i + 1] == '/') {
                i += 1;
            }
            i += 2;
        } else if c == 'r' && (next == Some('#') || next == Some('"')) && is_raw_start(&chars, i) {
            let mut hashes = 0;
            i += 1;
            while chars.get(i) == Some(&'#') {
                hashes += 1;
                i += 1;
            }
            i += 1;
            loop {
                match chars.get(i) {
                    None => break,
                    Some('"') if (1..=hashes).all(|h| chars.get(i + h) == Some(&'#')) => {
                        i += 1 + hashes;
                        break;
                    }
                    _ => i += 1,
                }
            }
            out.push_str("\"\"");
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' && next == Some('"') && chars.get(i + 2) == Some(&'\'') {
            // The char literal '"'.
            i += 3;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// Whether `r` at `i` starts a raw string (not the end of an identifier).
fn is_raw_start(chars: &[char], i: usize) -> bool {
    let ident = |k: usize| chars[k].is_alphanumeric() || chars[k] == '_';
    // `r"…"`, `r#"…"#`, and the byte form `br"…"`.
    let before_ok = i == 0 || !ident(i - 1) || (chars[i - 1] == 'b' && (i < 2 || !ident(i - 2)));
    let mut j = i + 1;
    while chars.get(j) == Some(&'#') {
        j += 1;
    }
    before_ok && chars.get(j) == Some(&'"')
}

/// Every path named after `crate::`, with `use crate::{a::b, c}` groups
/// expanded (`a::b`, `c`).
fn crate_paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let preceded_by_ident = rest[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$');
        rest = &rest[at + "crate::".len()..];
        if preceded_by_ident {
            continue;
        }
        let consumed = expand("", rest, &mut out);
        rest = &rest[consumed..];
    }
    out
}

/// Reads one path (or group) at the start of `s`, prefixed by `prefix`;
/// returns how many bytes it consumed.
fn expand(prefix: &str, s: &str, out: &mut Vec<String>) -> usize {
    let trimmed = s.trim_start();
    let mut pos = s.len() - trimmed.len();
    if let Some(group) = trimmed.strip_prefix('{') {
        pos += 1;
        let mut inner = group;
        loop {
            let t = inner.trim_start();
            pos += inner.len() - t.len();
            inner = t;
            if let Some(after) = inner.strip_prefix('}') {
                pos += 1;
                let _ = after;
                return pos;
            }
            if let Some(after) = inner.strip_prefix(',') {
                pos += 1;
                inner = after;
                continue;
            }
            if inner.is_empty() {
                return pos;
            }
            let n = expand(prefix, inner, out);
            if n == 0 {
                return pos;
            }
            pos += n;
            inner = &inner[n..];
        }
    }
    let ident_len = trimmed
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(trimmed.len());
    if ident_len == 0 {
        // `*` or `self`-like tokens end the path here.
        if !prefix.is_empty() {
            out.push(prefix.trim_end_matches("::").to_string());
        }
        return pos + trimmed.len().min(1);
    }
    let ident = &trimmed[..ident_len];
    pos += ident_len;
    let path = if prefix.is_empty() {
        ident.to_string()
    } else {
        format!("{prefix}{ident}")
    };
    let after = &trimmed[ident_len..];
    if let Some(more) = after.strip_prefix("::") {
        pos += 2;
        let n = expand(&format!("{path}::"), more, out);
        return pos + n;
    }
    if ident == "self" {
        out.push(prefix.trim_end_matches("::").to_string());
    } else {
        out.push(path);
    }
    pos
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("reading the source tree") {
        let path = entry.expect("reading the source tree").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every `(file, its module, the module it names)` of the library.
fn imports() -> Vec<(String, String, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let relative = file.strip_prefix(&src).expect("under src").to_path_buf();
        if relative == Path::new("lib.rs") {
            continue;
        }
        let from = module_of_file(&relative);
        let code = code_only(&std::fs::read_to_string(&file).expect("reading a source file"));
        for path in crate_paths(&code) {
            let to = module_of(&path);
            out.push((relative.display().to_string(), from.clone(), to));
        }
    }
    out
}

#[test]
fn no_module_imports_one_above_it() {
    let mut wrong = BTreeSet::new();
    for (file, from, to) in imports() {
        if from == to || EXEMPT.contains(&from.as_str()) {
            continue;
        }
        // Re-exported crates at the root (`crate::SecretString`).
        if to.starts_with(char::is_uppercase) {
            continue;
        }
        // A parent may use its nested modules (`dlq` → `dlq::letter`).
        if to.starts_with(&format!("{from}::")) {
            continue;
        }
        match (layer_of(&from), layer_of(&to)) {
            (None, _) => {
                wrong.insert(format!(
                    "{file}: module `{from}` is not in layers::LAYERS; add it to its layer"
                ));
            }
            (_, None) => {
                wrong.insert(format!(
                    "{file}: `crate::{to}` is not in layers::LAYERS; add it to its layer"
                ));
            }
            (Some(a), Some(b)) if b >= a => {
                wrong.insert(format!(
                    "{file}: `{from}` (layer {a}) uses `{to}` (layer {b}); \
                     a module may use lower layers only"
                ));
            }
            _ => {}
        }
    }
    assert!(
        wrong.is_empty(),
        "module layering broken:\n{}",
        wrong.into_iter().collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn every_module_of_the_crate_is_placed() {
    let lib = include_str!("lib.rs");
    let mut missing = Vec::new();
    for line in code_only(lib).lines() {
        let line = line.trim();
        let Some(name) = line
            .strip_prefix("pub mod ")
            .or_else(|| line.strip_prefix("mod "))
        else {
            continue;
        };
        let name = name.trim_end_matches(';').trim();
        if layer_of(name).is_none() && !EXEMPT.contains(&name) {
            missing.push(name.to_string());
        }
    }
    assert!(
        missing.is_empty(),
        "modules missing from layers::LAYERS: {missing:?}"
    );
}

#[test]
fn paths_are_read_like_the_compiler_does() {
    let code = code_only(
        "use crate::{a::{b, c::D}, e};\n\
         /// [`crate::doc::Link`]\n\
         let x = crate::f::g(\"crate::in_text\");\n\
         use crate::h::{self, I};\n\
         use crate::j::*;\n\
         let y = r#\"crate::raw\"#; let z = '\"'; mycrate::k();",
    );
    let paths = crate_paths(&code);
    assert_eq!(
        paths,
        ["a::b", "a::c::D", "e", "f::g", "h", "h::I", "j"],
        "{code}"
    );
    assert_eq!(module_of("dlq::letter::DeadLetter"), "dlq::letter");
    assert_eq!(module_of("dlq::Dlq"), "dlq");
    assert_eq!(module_of_file(Path::new("store/sql.rs")), "store");
    assert_eq!(module_of_file(Path::new("cache/mod.rs")), "cache");
    assert_eq!(module_of_file(Path::new("dlq/letter.rs")), "dlq::letter");
}

#[test]
fn an_upward_import_is_caught() {
    // The check itself can fail: `store` naming `bus` is upwards.
    let (store, bus) = (layer_of("store").unwrap(), layer_of("bus").unwrap());
    assert!(bus > store);
    let paths = crate_paths(&code_only("let row = crate::bus::outbox_row(e);"));
    assert_eq!(module_of(&paths[0]), "bus");
}

/// The error type of every `Result<T, E>` spelled in `code` (whitespace
/// removed), where it has two type arguments.
fn result_error_types(code: &str) -> Vec<String> {
    let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    let mut out = Vec::new();
    for (start, _) in code.match_indices("Result<") {
        let args = &code[start + "Result<".len()..];
        let (mut depth, mut last_comma, mut end) = (0usize, None, None);
        for (i, c) in args.char_indices() {
            match c {
                '<' | '(' | '[' => depth += 1,
                '>' if i > 0 && args.as_bytes()[i - 1] == b'-' => {}
                '>' | ')' | ']' if depth == 0 => {
                    end = Some(i);
                    break;
                }
                '>' | ')' | ']' => depth -= 1,
                ',' if depth == 0 => last_comma = Some(i),
                _ => {}
            }
        }
        if let (Some(comma), Some(end)) = (last_comma, end) {
            out.push(args[comma + 1..end].to_string());
        }
    }
    out
}

#[test]
fn library_errors_are_typed() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut bare = Vec::new();
    for file in files {
        let code = code_only(&std::fs::read_to_string(&file).expect("reading a source file"));
        if result_error_types(&code).iter().any(|e| e == "String") {
            bare.push(file.strip_prefix(&src).unwrap().display().to_string());
        }
    }
    assert!(
        bare.is_empty(),
        "Result<_, String> in {bare:?}: return a thiserror type that keeps the source"
    );
}

#[test]
fn result_error_types_are_read() {
    assert_eq!(
        result_error_types("fn f() -> Result<Vec<(String, u8)>, String> {}"),
        ["String"]
    );
    assert_eq!(
        result_error_types("BoxFuture<'a, Result<Option<String>,\n StoreError>>"),
        ["StoreError"]
    );
    assert!(result_error_types("io::Result<String>").is_empty());
}
