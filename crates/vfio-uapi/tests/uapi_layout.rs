//! Checks every struct layout and number in `vfio_uapi::layout` against the
//! Linux 6.12 header, by compiling a C program that prints what the C
//! compiler sees. The header comes from scripts/fetch-uapi-header.sh; without
//! it this test fails (a silently skipped ABI check is worse than none).
#![deny(clippy::undocumented_unsafe_blocks)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn c_program() -> String {
    let mut c = String::from(
        "#include <stdio.h>\n#include <stddef.h>\n#include <linux/vfio.h>\nint main(void) {\n",
    );
    for s in vfio_uapi::layout::structs() {
        writeln!(c, "  printf(\"size {0} %zu\\n\", sizeof(struct {0}));", s.name).unwrap();
        for (f, _) in &s.fields {
            writeln!(c, "  printf(\"offset {0}.{1} %zu\\n\", offsetof(struct {0}, {1}));", s.name, f).unwrap();
        }
    }
    for (name, _) in vfio_uapi::layout::numbers().into_iter().chain(vfio_uapi::layout::states()) {
        writeln!(c, "  printf(\"value {0} %llu\\n\", (unsigned long long)({0}));", name).unwrap();
    }
    c.push_str("  return 0;\n}\n");
    c
}

fn rust_view() -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for s in vfio_uapi::layout::structs() {
        m.insert(format!("size {}", s.name), s.size as u64);
        for (f, off) in &s.fields {
            m.insert(format!("offset {}.{}", s.name, f), *off as u64);
        }
    }
    for (name, v) in vfio_uapi::layout::numbers().into_iter().chain(vfio_uapi::layout::states()) {
        m.insert(format!("value {name}"), v);
    }
    m
}

#[test]
fn layouts_and_numbers_match_the_6_12_header() {
    let root = root();
    let include = root.join(".cache/uapi");
    let header = include.join("linux/vfio.h");
    assert!(
        header.is_file(),
        "{} is missing: run scripts/fetch-uapi-header.sh first (it downloads the Linux 6.12 uAPI header)",
        header.display()
    );

    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("uapi-layout");
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("probe.c");
    let bin = dir.join("probe");
    std::fs::write(&src, c_program()).unwrap();

    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let out = Command::new(&cc)
        .arg("-D__user=")
        .arg(format!("-I{}", include.display()))
        .arg("-o")
        .arg(&bin)
        .arg(&src)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cc}: {e}"));
    assert!(out.status.success(), "compiling the probe failed:\n{}", String::from_utf8_lossy(&out.stderr));

    let run = Command::new(&bin).output().expect("run the probe");
    assert!(run.status.success());
    let c_view: BTreeMap<String, u64> = String::from_utf8(run.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect();

    let rust = rust_view();
    assert_eq!(c_view.len(), rust.len(), "the probe printed a different number of facts");
    let mismatches: Vec<String> = rust
        .iter()
        .filter(|(k, v)| c_view.get(*k) != Some(v))
        .map(|(k, v)| format!("{k}: rust {v}, header {:?}", c_view.get(k)))
        .collect();
    assert!(mismatches.is_empty(), "ABI mismatches against {}:\n{}", header.display(), mismatches.join("\n"));
    // Guard against a table that silently lost its entries.
    assert!(rust.len() > 80, "only {} facts checked", rust.len());
}
