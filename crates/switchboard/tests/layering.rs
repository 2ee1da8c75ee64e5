//! The library's layers import one way only (docs/architecture.md): each module may name
//! modules of its own layer's rank or below, never one above. This reads every source file's
//! `crate::…` paths and checks them against the table below, so an import that runs back up
//! fails here, in CI, before it becomes a cycle.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Each top-level module of the library and its layer, lowest first. Keep in step with the
/// diagram in docs/architecture.md.
const LAYERS: &[(&str, u8)] = &[
    // leaf types
    ("kind", 0),
    ("origin", 0),
    ("peer", 0),
    ("config", 1),
    ("metrics", 1),
    ("auth", 2),
    ("login", 2),
    ("channels", 2),
    ("trace", 2),
    ("error", 3),
    // codecs
    ("ws", 4),
    ("wire", 4),
    ("delta", 4),
    ("pusher_wire", 4),
    ("publication", 5),
    ("filter", 5),
    // backend hooks: HTTP client, breakers, cache
    ("hooks", 5),
    ("webhooks", 5),
    ("history", 6),
    ("keyed", 6),
    // local fan-out and connections
    ("conn", 6),
    ("hub", 7),
    ("poll", 7),
    // the broker contract and its in-process engine
    ("broker", 8),
    // the node, between doors and broker
    ("node", 9),
    ("ingest", 10),
    ("state", 10),
    ("respond", 10),
    // doors
    ("protocol", 11),
    ("api", 12),
    ("door", 13),
    ("admin", 13),
    // the gateway and the crate root
    ("gateway", 14),
    ("lib", 15),
];

fn layer_of(module: &str) -> Option<u8> {
    LAYERS
        .iter()
        .find(|(name, _)| *name == module)
        .map(|(_, layer)| *layer)
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a source file belongs to.
fn module_of(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).expect("under src");
    let first = relative
        .components()
        .next()
        .expect("a path")
        .as_os_str()
        .to_string_lossy()
        .to_string();
    first.trim_end_matches(".rs").to_owned()
}

/// Every module named after `crate::` in `text`, outside comments. Test modules may reach
/// anywhere (they are not part of the layering).
fn imported(text: &str) -> Vec<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or(text);
    let mut found = Vec::new();
    for line in code.lines() {
        let line = line.trim_start();
        if line.starts_with("//") {
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && name.chars().next().is_some_and(|c| c.is_ascii_lowercase()) {
                found.push(name);
            }
        }
        // `use crate::{a, b}` names several.
        if let Some(at) = line.find("crate::{") {
            let inner = &line[at + "crate::{".len()..];
            for part in inner.split([',', '}']) {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    found.push(name);
                }
            }
        }
    }
    found
}

#[test]
fn every_module_has_a_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    for file in &files {
        let module = module_of(&src, file);
        assert!(
            layer_of(&module).is_some(),
            "{} (module `{module}`) has no layer in tests/layering.rs",
            file.display()
        );
    }
}

#[test]
fn no_module_imports_a_layer_above_its_own() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut upward: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for file in &files {
        let module = module_of(&src, file);
        let Some(own) = layer_of(&module) else {
            continue;
        };
        let text = std::fs::read_to_string(file).expect("a readable source file");
        for name in imported(&text) {
            if name == module {
                continue;
            }
            if let Some(theirs) = layer_of(&name) {
                if theirs > own {
                    upward
                        .entry(file.display().to_string())
                        .or_default()
                        .push(format!("{name} (layer {theirs} > {own})"));
                }
            }
        }
    }
    assert!(upward.is_empty(), "imports that run back up: {upward:#?}");
}
