//! The SDK as an outside author gets it: `cargo package` of `taskhost-sdk`
//! and its macros succeeds (cargo builds the packaged crates on their own),
//! and the WIT inside the package is this repository's `wit/`, file for
//! file (`sdk/wit` is a link to it, so the two cannot drift).

use std::path::Path;
use std::process::Command;

#[test]
fn the_sdk_packages_and_carries_the_repositorys_wit() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    // A target directory of its own: the suite's build lock is not shared.
    let target = repo.join("target/sdk-package");
    let packaged = Command::new(env!("CARGO"))
        .args(["package", "-p", "taskhost-sdk-macros", "-p", "taskhost-sdk", "--allow-dirty", "--offline", "--quiet"])
        .arg("--target-dir")
        .arg(&target)
        .current_dir(&repo)
        .output()
        .unwrap();
    assert!(packaged.status.success(), "cargo package failed:\n{}", String::from_utf8_lossy(&packaged.stderr));

    let name = format!("taskhost-sdk-{}", env!("CARGO_PKG_VERSION"));
    let unpacked = tempfile::tempdir().unwrap();
    let untar = Command::new("tar")
        .arg("xzf")
        .arg(target.join(format!("package/{name}.crate")))
        .arg("-C")
        .arg(unpacked.path())
        .output()
        .unwrap();
    assert!(untar.status.success(), "{}", String::from_utf8_lossy(&untar.stderr));
    let files = |dir: &Path| -> Vec<(String, Vec<u8>)> {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
            .collect();
        files.sort();
        files
    };
    let ours = files(&repo.join("wit"));
    assert!(ours.iter().any(|(name, _)| name == "world.wit"), "{:?}", ours.iter().map(|f| &f.0).collect::<Vec<_>>());
    let shipped = files(&unpacked.path().join(&name).join("wit"));
    assert!(shipped == ours, "the packaged WIT differs from wit/");
}
