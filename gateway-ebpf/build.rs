//! Builds the eBPF object with clang (`-O2 -g -target bpf -mcpu=v3`; v3 for atomic adds, `-g`
//! for the BTF that aya reads map definitions from) and a host program that prints the C
//! layout of `bpf/isthmus.h` for the layout test. `ISTHMUS_CLANG` names another clang.

use std::env;
use std::path::PathBuf;
use std::process::Command;

const SOURCES: &[&str] = &["bpf/isthmus.bpf.c", "bpf/isthmus.h", "bpf/layout_dump.c"];

fn main() {
    for s in SOURCES {
        println!("cargo:rerun-if-changed={s}");
    }
    println!("cargo:rerun-if-env-changed=ISTHMUS_CLANG");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let clang = env::var("ISTHMUS_CLANG").unwrap_or_else(|_| "clang".to_owned());

    // Debian keeps <asm/types.h> under the multiarch directory, which `-target bpf` does not
    // search by itself.
    let multiarch = Command::new("gcc")
        .arg("-print-multiarch")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("{}-linux-gnu", env::consts::ARCH));
    let object = out.join("isthmus.bpf.o");
    run(
        Command::new(&clang)
            .args([
                "-O2", "-g", "-target", "bpf", "-mcpu=v3", "-Wall", "-Werror",
            ])
            .arg(format!("-I/usr/include/{multiarch}"))
            .args(["-c", "bpf/isthmus.bpf.c", "-o"])
            .arg(&object),
        &clang,
    );

    let dump = out.join("layout_dump");
    run(
        Command::new(&clang)
            .args(["-O0", "-Wall", "-Werror", "bpf/layout_dump.c", "-o"])
            .arg(&dump),
        &clang,
    );
    let printed = Command::new(&dump)
        .output()
        .unwrap_or_else(|e| panic!("failed to run {}: {e}", dump.display()));
    assert!(
        printed.status.success(),
        "{} failed: {}",
        dump.display(),
        String::from_utf8_lossy(&printed.stderr)
    );
    std::fs::write(out.join("c_layout.rs"), printed.stdout).expect("writing c_layout.rs");
}

fn run(cmd: &mut Command, clang: &str) {
    let shown = format!("{cmd:?}");
    let output = cmd.output().unwrap_or_else(|e| {
        panic!(
            "failed to run {clang} ({e}): the eBPF programs need clang and libbpf-dev \
             (scripts/install-deps.sh installs them)"
        )
    });
    if !output.status.success() {
        panic!(
            "{shown} failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
