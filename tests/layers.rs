//! The layers of ARCHITECTURE.md, enforced: a module of `src/` may import only modules of lower
//! layers (and itself). Every `crate::` path in the code (comments and strings aside) is an
//! import; this test lists each one that points up or sideways, with its file and line.
//!
//! Module means a top-level module of the library (`src/store/**` is `store`, `src/phone.rs` is
//! `phone`). `src/main.rs` and `src/bin/` are separate crates on top of the library (they reach
//! it as `lifeline::`), so they are not read. Paths through `super::` are not followed: within a
//! top-level module they stay inside it, and a path that must leave it is written `crate::`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

/// The crate root (`src/lib.rs`: `AppState`, the router, `Server`). It assembles every module,
/// so it sits above all of them and may import any.
const ROOT: &str = "crate root";

/// The layers, bottom first: a module may import modules of lower layers only. Modules of one
/// layer are independent of each other.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "foundations, importing nothing of ours",
        &[
            "domain",
            "protocol",
            "phone",
            "breaker",
            "password",
            "telemetry",
        ],
    ),
    ("settings", &["config"]),
    (
        "records, and what the agent is told",
        &["store", "prompt_context"],
    ),
    ("acting on live calls", &["telephony"]),
    ("running tools; delivering callbacks", &["tools", "worker"]),
    ("ending what a dead process left", &["reconciler"]),
    ("platform adapters", &["ingress"]),
    ("operators' surfaces", &["ops"]),
    ("the HTTP server", &["serve"]),
];

/// Items of the crate root other modules may name, and which modules: the state the root hands
/// to the HTTP handlers it routes to. (It holds their own types, such as the Jambonz call
/// sockets, so it cannot sit below them.)
const ROOT_ITEMS: &[(&str, &str)] = &[("ingress", "AppState"), ("ops", "AppState")];

/// Imports that point the wrong way, tolerated while a move removes them: (from, to, who removes
/// it and how). Empty: every import points down. An entry must name who removes it.
const PENDING: &[(&str, &str, &str)] = &[];

/// One `crate::` path: where it is and what it names.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reference {
    line: usize,
    /// The path's first segment: a top-level module, or an item of the crate root.
    first: String,
}

/// An import that breaks the layering.
struct Violation {
    file: PathBuf,
    line: usize,
    from: String,
    to: String,
    item: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {} -> {} (crate::{})",
            self.file.display(),
            self.line,
            self.from,
            self.to,
            self.item
        )
    }
}

#[test]
fn lower_layers_do_not_import_higher_ones() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let files: Vec<(PathBuf, String)> = files
        .into_iter()
        .filter(|f| !is_separate_crate(&src, f))
        .map(|f| {
            let module = module_of(&src, &f);
            (f, module)
        })
        .collect();

    let layer: BTreeMap<&str, usize> = LAYERS
        .iter()
        .enumerate()
        .flat_map(|(i, (_, modules))| modules.iter().map(move |m| (*m, i)))
        .collect();
    let modules: BTreeSet<&str> = files.iter().map(|(_, m)| m.as_str()).collect();
    let unplaced: Vec<&&str> = modules
        .iter()
        .filter(|m| **m != ROOT && !layer.contains_key(**m))
        .collect();
    assert!(
        unplaced.is_empty(),
        "modules without a layer (add them to LAYERS and ARCHITECTURE.md): {unplaced:?}"
    );
    let gone: Vec<&&str> = layer.keys().filter(|m| !modules.contains(**m)).collect();
    assert!(
        gone.is_empty(),
        "LAYERS names modules that do not exist: {gone:?}"
    );

    let mut violations = Vec::new();
    let mut pending_seen = BTreeSet::new();
    for (file, from) in &files {
        if from == ROOT {
            continue;
        }
        let text = std::fs::read_to_string(file).expect("a source file is readable");
        for r in crate_references(&text) {
            let to = if modules.contains(r.first.as_str()) {
                r.first.as_str()
            } else {
                ROOT
            };
            if to == from {
                continue;
            }
            let allowed = if to == ROOT {
                ROOT_ITEMS.contains(&(from.as_str(), r.first.as_str()))
            } else {
                layer[to] < layer[from.as_str()]
            };
            if allowed {
                continue;
            }
            if PENDING.iter().any(|(f, t, _)| *f == from && *t == to) {
                pending_seen.insert((from.clone(), to.to_string()));
                continue;
            }
            violations.push(Violation {
                file: file.strip_prefix(src.parent().unwrap()).unwrap().into(),
                line: r.line,
                from: from.clone(),
                to: to.to_string(),
                item: r.first,
            });
        }
    }
    for (from, to) in &pending_seen {
        eprintln!("pending (allowed for now): {from} -> {to}");
    }
    let listed: Vec<String> = violations.iter().map(ToString::to_string).collect();
    assert!(
        violations.is_empty(),
        "{} import(s) point up or sideways (see ARCHITECTURE.md for who may import whom):\n{}",
        violations.len(),
        listed.join("\n")
    );
}

/// The checker itself: it must see grouped, multi-line and macro paths, and nothing in comments
/// or strings.
#[test]
fn references_are_found_in_code_only() {
    let text = r##"//! A module. crate::in_a_doc_comment
use crate::store::Store;
use crate::{
    config::Config,
    domain::{Platform, ToolError},
};
/* crate::in_a_block /* nested crate::deeper */ still crate::comment */
pub(crate) fn f() -> &'static str {
    let _c = '"';
    let _ = "crate::in_a_string \" crate::still";
    let _ = r#"crate::raw "quoted" crate::raw"#;
    let _ = b'\'';
    $crate::telephony::x!();
    crate::AppState::new();
    "crate::last" // crate::trailing
}
"##;
    let references = crate_references(text);
    let found: Vec<(usize, &str)> = references
        .iter()
        .map(|r| (r.line, r.first.as_str()))
        .collect();
    assert_eq!(
        found,
        [
            (2, "store"),
            (4, "config"),
            (5, "domain"),
            (13, "telephony"),
            (14, "AppState"),
        ]
    );
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src/ is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/main.rs` and `src/bin/**` are crates of their own.
fn is_separate_crate(src: &Path, file: &Path) -> bool {
    let rel = file.strip_prefix(src).expect("under src/");
    rel == Path::new("main.rs") || rel.starts_with("bin")
}

/// The top-level module a file belongs to.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src/");
    let first = rel
        .components()
        .next()
        .expect("a path under src/")
        .as_os_str()
        .to_string_lossy()
        .into_owned();
    match first.strip_suffix(".rs") {
        Some("lib") => ROOT.to_string(),
        Some(stem) => stem.to_string(),
        None => first,
    }
}

/// Every `crate::` path in `text` outside comments and literals, with the first segment of
/// each (each member of a `crate::{…}` group counts as a path).
fn crate_references(text: &str) -> Vec<Reference> {
    let code: Vec<char> = code_only(text).chars().collect();
    let line_of = |at: usize| 1 + code[..at].iter().filter(|c| **c == '\n').count();
    let mut found = Vec::new();
    let mut i = 0;
    while let Some(start) = find(&code, i, "crate::") {
        i = start + "crate::".len();
        if start > 0 && is_ident(code[start - 1]) {
            continue; // `my_crate::`, not ours
        }
        let mut j = skip_space(&code, i);
        if code.get(j) == Some(&'{') {
            // A group: the first segment of each member at its top level.
            let mut depth = 0;
            let mut at_member = true;
            while j < code.len() {
                match code[j] {
                    '{' => {
                        depth += 1;
                        at_member = depth == 1;
                    }
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => at_member = true,
                    c if at_member && is_ident(c) => {
                        let (ident, end) = ident_at(&code, j);
                        found.push(Reference {
                            line: line_of(j),
                            first: ident,
                        });
                        at_member = false;
                        j = end;
                        continue;
                    }
                    _ => {}
                }
                j += 1;
            }
            i = j;
        } else if code.get(j).is_some_and(|c| is_ident(*c)) {
            let (ident, end) = ident_at(&code, j);
            found.push(Reference {
                line: line_of(j),
                first: ident,
            });
            j = end;
            i = j;
        }
    }
    found.retain(|r| r.first != "self");
    found
}

fn find(code: &[char], from: usize, needle: &str) -> Option<usize> {
    let needle: Vec<char> = needle.chars().collect();
    (from..code.len().saturating_sub(needle.len() - 1)).find(|&i| code[i..].starts_with(&needle))
}

fn skip_space(code: &[char], mut i: usize) -> usize {
    while code.get(i).is_some_and(|c| c.is_whitespace()) {
        i += 1;
    }
    i
}

fn is_ident(c: char) -> bool {
    c == '_' || c.is_alphanumeric()
}

fn ident_at(code: &[char], start: usize) -> (String, usize) {
    let mut end = start;
    while code.get(end).is_some_and(|c| is_ident(*c)) {
        end += 1;
    }
    (code[start..end].iter().collect(), end)
}

/// `text` with comments, string and character literals blanked (line breaks kept, so line
/// numbers hold).
fn code_only(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |out: &mut String, s: &[char]| {
        out.extend(s.iter().map(|&ch| if ch == '\n' { '\n' } else { ' ' }));
    };
    let mut i = 0;
    while i < c.len() {
        let rest = &c[i..];
        let prev_ident = i > 0 && is_ident(c[i - 1]);
        let end = if rest.starts_with(&['/', '/']) {
            // To the end of the line.
            i + rest.iter().position(|&ch| ch == '\n').unwrap_or(rest.len())
        } else if rest.starts_with(&['/', '*']) {
            let mut depth = 0;
            let mut j = i;
            while j < c.len() {
                if c[j..].starts_with(&['/', '*']) {
                    depth += 1;
                    j += 2;
                } else if c[j..].starts_with(&['*', '/']) {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            j
        } else if let Some(end) = raw_string_end(&c, i, prev_ident) {
            end
        } else if c[i] == '"' {
            let mut j = i + 1;
            while j < c.len() && c[j] != '"' {
                j += if c[j] == '\\' { 2 } else { 1 };
            }
            j + 1
        } else if c[i] == '\'' && c.get(i + 1) == Some(&'\\') {
            // An escaped character literal: `'\''`, `'\n'`, `'\u{..}'`.
            let mut j = i + 3;
            while j < c.len() && c[j] != '\'' {
                j += 1;
            }
            j + 1
        } else if c[i] == '\'' && c.get(i + 2) == Some(&'\'') {
            i + 3
        } else {
            // Code (a lifetime's quote included).
            out.push(c[i]);
            i += 1;
            continue;
        };
        let end = end.min(c.len());
        blank(&mut out, &c[i..end]);
        i = end;
    }
    out
}

/// Where a raw string literal (`r"…"`, `r#"…"#`, `br#"…"#`) starting at `i` ends, if one does.
fn raw_string_end(c: &[char], i: usize, prev_ident: bool) -> Option<usize> {
    let mut j = i;
    if c[j] == 'b' && !prev_ident {
        j += 1;
    } else if prev_ident {
        return None;
    }
    if c.get(j) != Some(&'r') {
        return None;
    }
    j += 1;
    let hashes = c[j..].iter().take_while(|&&ch| ch == '#').count();
    j += hashes;
    if c.get(j) != Some(&'"') {
        return None;
    }
    let close: Vec<char> = std::iter::once('"')
        .chain(std::iter::repeat_n('#', hashes))
        .collect();
    let from = j + 1;
    let end = (from..c.len())
        .find(|&k| c[k..].starts_with(&close))
        .map_or(c.len(), |k| k + close.len());
    Some(end)
}
