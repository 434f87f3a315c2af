//! The source tree's shape, checked: imports between the crate's modules run one way (no
//! cycle between files, none between the top-level stages), and no source file outside tests
//! grows past the size one can hold in mind.
//!
//! The graph is read from the text of `src/`: every `crate::…` and `super::…` path (in `use`
//! items, grouped `use crate::{a::B, c}` forms and inline paths), outside comments and
//! `#[cfg(test)]` modules, names the deepest module that exists; that is one arrow. A child
//! module may use its parent (the parent owns it); sibling and cross-folder arrows must not
//! close a circle. Run `cargo test --test module_graph -- --nocapture` to print the graph.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Lines a source file may have outside its `#[cfg(test)]` module.
const MAX_LINES: usize = 800;

type Module = Vec<String>;

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every library source file with its module path (`src/a/b.rs` and `src/a/b/mod.rs` are
/// `a::b`); `main.rs` and `bin/` are binaries, not modules of the library.
fn modules() -> BTreeMap<Module, PathBuf> {
    fn walk(dir: &Path, prefix: &Module, out: &mut BTreeMap<Module, PathBuf>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .expect("read src")
            .map(|e| e.expect("dir entry").path())
            .collect();
        entries.sort();
        for p in entries {
            let name = p
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("")
                .to_owned();
            if p.is_dir() {
                if prefix.is_empty() && name == "bin" {
                    continue;
                }
                let mut m = prefix.clone();
                m.push(name);
                walk(&p, &m, out);
            } else if let Some(stem) = name.strip_suffix(".rs") {
                if prefix.is_empty() && stem == "main" {
                    continue;
                }
                let mut m = prefix.clone();
                if stem != "mod" && stem != "lib" {
                    m.push(stem.to_owned());
                }
                out.insert(m, p);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(&src_dir(), &Vec::new(), &mut out);
    out
}

/// The file's code: comments and the trailing `#[cfg(test)]` module removed, string
/// literals blanked (a path inside a message is no import).
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if b[i] == b'"' {
            // A string (raw strings in this tree hold no quotes of their own kind).
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' {
            // A char literal ('x', '\n', '"') or a lifetime ('a): skip a literal whole so
            // its quote character is not read as the start of a string.
            if b.get(i + 1) == Some(&b'\\') {
                let mut j = i + 2;
                while j < b.len() && b[j] != b'\'' {
                    j += 1;
                }
                i = j + 1;
            } else if b.get(i + 2) == Some(&b'\'') {
                i += 3;
            } else {
                out.push('\'');
                i += 1;
            }
        } else {
            let start = i;
            i += 1;
            while i < b.len() && !matches!(b[i], b'/' | b'"' | b'\'') {
                i += 1;
            }
            out.push_str(&text[start..i]);
        }
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The paths starting at `code[at..]` (just after `crate::` or `super::`): one path, or
/// several for a grouped `{a::B, c::{d, e}}`.
fn paths_at(code: &str, at: usize) -> Vec<Vec<String>> {
    fn parse(s: &[char], i: &mut usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
        let mut cur = prefix;
        loop {
            while *i < s.len() && s[*i].is_whitespace() {
                *i += 1;
            }
            if *i < s.len() && s[*i] == '{' {
                *i += 1;
                loop {
                    parse(s, i, cur.clone(), out);
                    while *i < s.len() && s[*i].is_whitespace() {
                        *i += 1;
                    }
                    if *i < s.len() && s[*i] == ',' {
                        *i += 1;
                        continue;
                    }
                    if *i < s.len() && s[*i] == '}' {
                        *i += 1;
                    }
                    return;
                }
            }
            let start = *i;
            while *i < s.len() && is_ident(s[*i]) {
                *i += 1;
            }
            if *i == start {
                out.push(cur);
                return;
            }
            cur.push(s[start..*i].iter().collect());
            if s.get(*i) == Some(&':') && s.get(*i + 1) == Some(&':') {
                *i += 2;
            } else {
                out.push(cur);
                return;
            }
        }
    }
    let s: Vec<char> = code[at..].chars().take(4000).collect();
    let mut out = Vec::new();
    let mut i = 0;
    parse(&s, &mut i, Vec::new(), &mut out);
    out
}

/// Module-to-module arrows (a module never points at itself or at an ancestor of its own).
fn arrows(mods: &BTreeMap<Module, PathBuf>) -> BTreeMap<Module, BTreeSet<Module>> {
    let mut graph: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (m, path) in mods {
        let code = code_of(&std::fs::read_to_string(path).expect("read source"));
        let set = graph.entry(m.clone()).or_default();
        // `super` of module `a::b` is `a`, whether it is `a/b.rs` or `a/b/mod.rs`.
        let parent = m[..m.len().saturating_sub(1)].to_vec();
        for (kw, base) in [("crate::", Vec::new()), ("super::", parent)] {
            let mut from = 0;
            while let Some(pos) = code[from..].find(kw) {
                let at = from + pos;
                from = at + kw.len();
                if at > 0 && code[..at].chars().last().is_some_and(is_ident) {
                    continue;
                }
                for rel in paths_at(&code, from) {
                    let mut full = base.clone();
                    let mut rel = rel.into_iter().peekable();
                    // `super::super::x`
                    while rel.peek().is_some_and(|s| s == "super") {
                        rel.next();
                        full.pop();
                    }
                    full.extend(rel);
                    // The deepest existing module the path names.
                    let mut target = full.clone();
                    while !target.is_empty() && !mods.contains_key(&target) {
                        target.pop();
                    }
                    if target.is_empty() || target == *m || m.starts_with(&target) {
                        continue;
                    }
                    set.insert(target);
                }
            }
        }
    }
    graph
}

/// The circles of `graph` (its strongly connected components of more than one node).
fn circles<N: Ord + Clone>(graph: &BTreeMap<N, BTreeSet<N>>) -> Vec<Vec<N>> {
    // Tarjan's algorithm, iterative enough for a few hundred nodes.
    struct St<N> {
        index: BTreeMap<N, usize>,
        low: BTreeMap<N, usize>,
        stack: Vec<N>,
        on: BTreeSet<N>,
        next: usize,
        out: Vec<Vec<N>>,
    }
    fn visit<N: Ord + Clone>(n: &N, g: &BTreeMap<N, BTreeSet<N>>, st: &mut St<N>) {
        st.index.insert(n.clone(), st.next);
        st.low.insert(n.clone(), st.next);
        st.next += 1;
        st.stack.push(n.clone());
        st.on.insert(n.clone());
        for w in g.get(n).into_iter().flatten() {
            if !st.index.contains_key(w) {
                visit(w, g, st);
                let lw = st.low[w];
                let ln = st.low[n];
                st.low.insert(n.clone(), ln.min(lw));
            } else if st.on.contains(w) {
                let iw = st.index[w];
                let ln = st.low[n];
                st.low.insert(n.clone(), ln.min(iw));
            }
        }
        if st.low[n] == st.index[n] {
            let mut comp = Vec::new();
            while let Some(w) = st.stack.pop() {
                st.on.remove(&w);
                let done = w == *n;
                comp.push(w);
                if done {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                st.out.push(comp);
            }
        }
    }
    let mut st = St {
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for n in graph.keys() {
        if !st.index.contains_key(n) {
            visit(n, graph, &mut st);
        }
    }
    st.out
}

fn name(m: &Module) -> String {
    if m.is_empty() {
        "crate".into()
    } else {
        m.join("::")
    }
}

fn describe<N: Ord + Clone>(
    cs: &[Vec<N>],
    g: &BTreeMap<N, BTreeSet<N>>,
    show: impl Fn(&N) -> String,
) -> String {
    let mut s = String::new();
    for c in cs {
        s.push_str(&format!(
            "circle: {}\n",
            c.iter().map(&show).collect::<Vec<_>>().join(", ")
        ));
        for a in c {
            for b in g.get(a).into_iter().flatten() {
                if c.contains(b) {
                    s.push_str(&format!("  {} -> {}\n", show(a), show(b)));
                }
            }
        }
    }
    s
}

#[test]
fn no_import_cycle_between_files() {
    let mods = modules();
    let g = arrows(&mods);
    if std::env::var_os("SHOW_GRAPH").is_some() {
        for (a, bs) in &g {
            println!(
                "{} -> {}",
                name(a),
                bs.iter().map(name).collect::<Vec<_>>().join(", ")
            );
        }
    }
    let cs = circles(&g);
    assert!(
        cs.is_empty(),
        "import cycles between files:\n{}",
        describe(&cs, &g, name)
    );
}

#[test]
fn no_import_cycle_between_stages() {
    // A stage is a top-level module (a folder or a file directly under src/).
    let g = arrows(&modules());
    let mut stages: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (a, bs) in &g {
        let Some(sa) = a.first() else { continue };
        let set = stages.entry(sa.clone()).or_default();
        for b in bs {
            if let Some(sb) = b.first() {
                if sb != sa {
                    set.insert(sb.clone());
                }
            }
        }
    }
    let cs = circles(&stages);
    assert!(
        cs.is_empty(),
        "import cycles between top-level modules:\n{}",
        describe(&cs, &stages, |s| s.clone())
    );
}

#[test]
fn no_source_file_is_too_long() {
    let mut long = Vec::new();
    for path in modules().values() {
        let text = std::fs::read_to_string(path).expect("read source");
        let text = match text.find("#[cfg(test)]\nmod tests") {
            Some(i) => &text[..i],
            None => &text[..],
        };
        let n = text.lines().count();
        if n > MAX_LINES {
            long.push(format!("{} ({n} lines)", path.display()));
        }
    }
    assert!(
        long.is_empty(),
        "source files over {MAX_LINES} lines (split them by concept):\n{}",
        long.join("\n")
    );
}

#[test]
fn the_checker_sees_grouped_and_nested_paths() {
    let code = code_of("use crate::{a::B, c::{d, e::F}};\n// crate::zz::no\nlet s = \"crate::yy\"; x(crate::g::h);");
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(p) = code[from..].find("crate::") {
        from += p + 7;
        found.extend(paths_at(&code, from));
    }
    let found: Vec<String> = found.iter().map(|p| p.join("::")).collect();
    assert_eq!(found, ["a::B", "c::d", "c::e::F", "g::h"]);
}
