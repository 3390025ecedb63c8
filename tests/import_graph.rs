//! The import graph of `src/` has no cycle: between folders (top-level modules such as
//! `sip`, `trunk`, `config`), and between the files of one folder (`config/loader` and
//! `config/validate`). A module and its own submodules (`mod.rs` and its children) may use
//! each other; that is how a Rust module tree is built.
//!
//! The graph is read from the source text: every `use crate::...` / `use super::...` tree
//! and every `crate::...` / `super::...` path in code (comments and string literals
//! excluded), each resolved to the deepest module file it names.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// A module file, named by its path under src/ without `.rs` (`mod.rs` names its folder):
/// `sip/endpoint`, `config`, `lib`.
type Node = String;

fn node_of(rel: &Path) -> Node {
    let s = rel.with_extension("").to_string_lossy().replace('\\', "/");
    s.strip_suffix("/mod").map_or(s.clone(), str::to_string)
}

/// Every `.rs` file under `dir`, as (node, text).
fn read_tree(dir: &Path) -> Vec<(Node, String)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(Node, String)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("directory entry").path())
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(root, &p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p).expect("read source file");
                out.push((node_of(p.strip_prefix(root).expect("under root")), text));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out
}

/// The code of a Rust file without comments and with string and char literals emptied.
fn code_only(src: &str) -> String {
    let b: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if c == 'r'
            && (i == 0 || !ident(b[i - 1]))
            && matches!(next, Some('"') | Some('#'))
            && {
                let mut j = i + 1;
                while b.get(j) == Some(&'#') {
                    j += 1;
                }
                b.get(j) == Some(&'"')
            }
        {
            let mut hashes = 0;
            i += 1;
            while b[i] == '#' {
                hashes += 1;
                i += 1;
            }
            i += 1; // the opening quote
            loop {
                if i >= b.len() {
                    break;
                }
                if b[i] == '"' && (1..=hashes).all(|k| b.get(i + k) == Some(&'#')) {
                    i += 1 + hashes;
                    break;
                }
                i += 1;
            }
            out.push_str("\"\"");
        } else if c == '"' {
            i += 1;
            while i < b.len() && b[i] != '"' {
                i += if b[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' && next == Some('\\') {
            // an escaped char literal: '\n', '\'', '\u{..}'
            i += 2;
            while i < b.len() && b[i] != '\'' {
                i += 1;
            }
            i += 1;
            out.push_str("' '");
        } else if c == '\'' && b.get(i + 2) == Some(&'\'') {
            i += 3;
            out.push_str("' '");
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// The paths a use tree names: `a::{b, c::{d, e as f}}` -> `a::b`, `a::c::d`, `a::c::e`.
fn expand_use(tree: &str) -> Vec<String> {
    fn rec(prefix: &str, t: &str, out: &mut Vec<String>) {
        let t = t.trim();
        let Some(open) = t.find('{') else {
            // `e as f` names `e`
            let leaf = t.split_whitespace().next().unwrap_or("");
            out.push(format!("{prefix}{leaf}"));
            return;
        };
        let head = t[..open].trim();
        let body = &t[open + 1..t.rfind('}').unwrap_or(t.len())];
        let (mut depth, mut start) = (0, 0);
        let mut parts = Vec::new();
        for (k, ch) in body.char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    parts.push(&body[start..k]);
                    start = k + 1;
                }
                _ => {}
            }
        }
        parts.push(&body[start..]);
        for p in parts.into_iter().filter(|p| !p.trim().is_empty()) {
            rec(&format!("{prefix}{head}"), p, out);
        }
    }
    let mut out = Vec::new();
    rec("", tree, &mut out);
    out
}

/// The deepest module file a `crate::`/`super::` path from `from` names, if any.
fn resolve(from: &str, path: &str, nodes: &BTreeSet<Node>) -> Option<Node> {
    let mut segs = path.split("::").map(str::trim).peekable();
    let mut base: Vec<&str> = match *segs.peek()? {
        "crate" => {
            segs.next();
            Vec::new()
        }
        "super" => {
            let mut base: Vec<&str> = if from == "lib" || from == "main" {
                Vec::new()
            } else {
                from.split('/').collect()
            };
            while segs.peek() == Some(&"super") {
                segs.next();
                base.pop();
            }
            base
        }
        _ => return None,
    };
    let mut best = if base.is_empty() {
        "lib".to_string()
    } else {
        base.join("/")
    };
    for s in segs {
        base.push(s);
        let candidate = base.join("/");
        if nodes.contains(&candidate) {
            best = candidate;
        } else {
            break;
        }
    }
    Some(best)
}

/// `a` is `b`, or one of them is a submodule of the other.
fn related(a: &str, b: &str) -> bool {
    let root = |n: &str| n == "lib" || n == "main";
    a == b
        || root(a)
        || root(b)
        || a.starts_with(&format!("{b}/"))
        || b.starts_with(&format!("{a}/"))
}

/// Module file -> module files it imports, without a module's own ancestors or submodules.
fn file_edges(files: &[(Node, String)]) -> BTreeSet<(Node, Node)> {
    let nodes: BTreeSet<Node> = files.iter().map(|(n, _)| n.clone()).collect();
    let mut edges = BTreeSet::new();
    for (from, text) in files {
        let code = code_only(text);
        let mut rest = String::with_capacity(code.len());
        let mut paths = Vec::new();
        // use trees, then every other path
        let mut s = code.as_str();
        while let Some(k) = find_word(s, "use") {
            rest.push_str(&s[..k]);
            let after = &s[k + 3..];
            let end = after.find(';').unwrap_or(after.len());
            paths.extend(expand_use(&after[..end]));
            s = &after[(end + 1).min(after.len())..];
        }
        rest.push_str(s);
        paths.extend(inline_paths(&rest));
        for p in paths {
            if let Some(to) = resolve(from, &p, &nodes)
                && !related(from, &to)
            {
                edges.insert((from.clone(), to));
            }
        }
    }
    edges
}

/// The byte offset of `word` standing alone (not part of an identifier), if any.
fn find_word(s: &str, word: &str) -> Option<usize> {
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut from = 0;
    while let Some(k) = s[from..].find(word).map(|k| k + from) {
        let before = s[..k].chars().next_back();
        let after = s[k + word.len()..].chars().next();
        if !before.is_some_and(ident) && !after.is_some_and(ident) {
            return Some(k);
        }
        from = k + word.len();
    }
    None
}

/// `crate::a::b` and `super::super::c` paths written inline in code.
fn inline_paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    for start in ["crate::", "super::"] {
        let mut s = code;
        while let Some(k) = find_word(s, &start[..start.len() - 2]) {
            let tail = &s[k..];
            let len = tail
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(tail.len());
            if tail[..len].starts_with(start) {
                out.push(tail[..len].trim_end_matches(':').to_string());
            }
            s = &tail[len.max(1)..];
        }
    }
    out
}

fn top(n: &str) -> &str {
    n.split('/').next().unwrap_or(n)
}

/// A cycle in the directed graph, as the list of nodes around it, if there is one.
fn find_cycle(edges: &BTreeSet<(Node, Node)>) -> Option<Vec<Node>> {
    let mut graph: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (a, b) in edges {
        graph.entry(a).or_default().push(b);
    }
    // 0 = unseen, 1 = on the current path, 2 = done
    fn visit<'a>(
        n: &'a str,
        graph: &BTreeMap<&'a str, Vec<&'a str>>,
        state: &mut BTreeMap<&'a str, u8>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<Node>> {
        state.insert(n, 1);
        path.push(n);
        for &m in graph.get(n).into_iter().flatten() {
            match state.get(m).copied().unwrap_or(0) {
                1 => {
                    let at = path.iter().position(|&x| x == m).expect("on the path");
                    let mut cycle: Vec<Node> = path[at..].iter().map(|s| s.to_string()).collect();
                    cycle.push(m.to_string());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(m, graph, state, path) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        path.pop();
        state.insert(n, 2);
        None
    }
    let mut state = BTreeMap::new();
    let starts: Vec<&str> = graph.keys().copied().collect();
    for n in starts {
        if state.get(n).copied().unwrap_or(0) == 0
            && let Some(c) = visit(n, &graph, &mut state, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

/// The folder graph (edges between top-level modules) and the graph between the files of
/// each folder; each must be acyclic. Returns the cycles found, described.
fn cycles(files: &[(Node, String)]) -> Vec<String> {
    let edges = file_edges(files);
    let folders: BTreeSet<(Node, Node)> = edges
        .iter()
        .filter(|(a, b)| top(a) != top(b))
        .map(|(a, b)| (top(a).to_string(), top(b).to_string()))
        .collect();
    let within: BTreeSet<(Node, Node)> = edges
        .iter()
        .filter(|(a, b)| top(a) == top(b))
        .cloned()
        .collect();
    let mut found = Vec::new();
    if let Some(c) = find_cycle(&folders) {
        let why: Vec<String> = c
            .windows(2)
            .map(|w| {
                let via: Vec<String> = edges
                    .iter()
                    .filter(|(a, b)| top(a) == w[0] && top(b) == w[1])
                    .map(|(a, b)| format!("{a} -> {b}"))
                    .collect();
                via.join(", ")
            })
            .collect();
        found.push(format!("folders: {} ({})", c.join(" -> "), why.join("; ")));
    }
    if let Some(c) = find_cycle(&within) {
        found.push(format!("files: {}", c.join(" -> ")));
    }
    found
}

#[test]
fn the_source_tree_has_no_import_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files = read_tree(&src);
    assert!(files.len() > 50, "read {} files under src/", files.len());
    let edges = file_edges(&files);
    // the reader sees real imports: the endpoint uses the transaction layer
    assert!(
        edges.contains(&("sip/endpoint".into(), "sip/transaction".into())),
        "{edges:?}"
    );
    let found = cycles(&files);
    assert!(
        found.is_empty(),
        "import cycles in src/:\n{}",
        found.join("\n")
    );
}

fn tree(files: &[(&str, &str)]) -> Vec<(Node, String)> {
    files
        .iter()
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect()
}

#[test]
fn a_loop_between_files_of_one_folder_is_found() {
    let files = tree(&[
        ("lib", "pub mod config;"),
        (
            "config",
            "mod loader;\nmod validate;\npub use loader::load;",
        ),
        (
            "config/loader",
            "use super::{error::E, validate};\nfn f() { validate::run() }",
        ),
        (
            "config/validate",
            "use super::loader::Parsed;\npub fn run() {}",
        ),
        ("config/error", "pub struct E;"),
    ]);
    let found = cycles(&files);
    assert_eq!(
        found,
        ["files: config/loader -> config/validate -> config/loader"]
    );
}

#[test]
fn a_loop_between_folders_is_found_through_inline_paths_and_nested_trees() {
    let files = tree(&[
        ("sip", "pub mod endpoint;"),
        (
            "sip/endpoint",
            "fn f() { let m = crate::trunk::matching::match_inbound(); }",
        ),
        ("trunk", "pub mod client;\npub mod matching;"),
        (
            "trunk/client",
            "use crate::{config, sip::{endpoint::Handle as H, self}};",
        ),
        ("trunk/matching", "use crate::config::Trunk;"),
        ("config", ""),
    ]);
    let found = cycles(&files);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("folders: sip -> trunk -> sip")
            || found[0].starts_with("folders: trunk -> sip -> trunk"),
        "{found:?}"
    );
    assert!(
        found[0].contains("sip/endpoint -> trunk/matching"),
        "{found:?}"
    );
    assert!(
        found[0].contains("trunk/client -> sip/endpoint"),
        "{found:?}"
    );
}

#[test]
fn comments_strings_and_submodules_are_not_imports() {
    let files = tree(&[
        ("a", "mod inner;\nuse inner::X;"),
        ("a/inner", "use super::Y; // crate::b::f\npub struct X;"),
        (
            "b",
            "/* use crate::a; */ const S: &str = \"crate::a::X\"; const R: &str = r#\"super::a\"#; fn f<'x>(c: char) -> bool { c == '\"' }",
        ),
    ]);
    assert!(file_edges(&files).is_empty(), "{:?}", file_edges(&files));
    // and a real path after those is still seen
    let files = tree(&[
        ("a", ""),
        ("b", "fn f(c: char) -> bool { c == '\"' && crate::a::g() }"),
    ]);
    assert_eq!(
        file_edges(&files),
        BTreeSet::from([("b".to_string(), "a".to_string())])
    );
}
