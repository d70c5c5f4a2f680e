//! Components that cannot run as tasks are refused at load, with the reason.

use taskhost::LoadError;
use taskhost_test_artifacts::{MISSING_IMPORT, WRONG_WORLD};

#[test]
fn garbage_is_not_wasm() {
    let err = crate::sandbox().load("x", "1", b"#!/bin/sh\necho hi\n").unwrap_err();
    assert!(matches!(err, LoadError::NotWasm), "{err}");
}

#[test]
fn a_core_module_is_not_a_component() {
    let err = crate::sandbox().load("x", "1", b"\0asm\x01\0\0\0").unwrap_err();
    assert!(matches!(err, LoadError::CoreModule), "{err}");
    assert!(err.to_string().contains("not a component"));
}

#[test]
fn a_truncated_component_does_not_compile() {
    let bytes = crate::plugin_bytes_truncated();
    let err = crate::sandbox().load("x", "1", &bytes).unwrap_err();
    assert!(matches!(err, LoadError::Compile(_)), "{err}");
}

#[test]
fn another_world_is_refused_naming_the_missing_export() {
    let err = crate::sandbox().load("x", "1", &WRONG_WORLD.bytes()).unwrap_err();
    assert!(matches!(err, LoadError::WrongWorld(_)), "{err}");
    let message = err.to_string();
    assert!(message.contains("does not implement world `taskhost:plugin/task@0.1.1`"), "{message}");
    assert!(message.contains("no export `run`"), "{message}");
}

#[test]
fn an_unknown_import_is_refused_naming_it() {
    let err = crate::sandbox().load("x", "1", &MISSING_IMPORT.bytes()).unwrap_err();
    assert!(matches!(err, LoadError::MissingImport(_)), "{err}");
    assert!(err.to_string().contains("test:missing/db"), "{err}");
}

/// The usual mistakes of a plugin author get a hint that says what to do.
#[test]
fn an_authors_usual_mistakes_are_told_what_to_do() {
    // A native build: the host's own binary is an ELF file.
    let native = std::fs::read(env!("CARGO_BIN_EXE_taskhost")).unwrap();
    let err = crate::sandbox().load("x", "1", &native[..4096]).unwrap_err();
    assert!(matches!(err, LoadError::NativeCode), "{err}");
    assert!(err.to_string().contains("--target wasm32-wasip2"), "{err}");
    // A library archive: cargo built an .rlib, not a cdylib.
    let err = crate::sandbox()
        .load("x", "1", b"!<arch>\n/               0           0     0     0       8         `\n")
        .unwrap_err();
    assert!(matches!(err, LoadError::Archive), "{err}");
    assert!(err.to_string().contains(r#"crate-type = ["cdylib"]"#), "{err}");
    // A component that wants outgoing HTTP.
    let err = crate::sandbox().load("x", "1", &http_component()).unwrap_err();
    assert!(matches!(err, LoadError::MissingImport(_)), "{err}");
    let message = err.to_string();
    assert!(message.contains("wasi:http/outgoing-handler") && message.contains("provides no `wasi:http`"), "{message}");
}

/// `taskhost run` of a .wasm that cargo did not build, beside the .rlib it
/// did, says why.
#[test]
fn a_missing_wasm_beside_an_rlib_asks_for_a_cdylib() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("libgreeter.rlib"), b"!<arch>\n").unwrap();
    let wasm = dir.path().join("greeter.wasm");
    let out = crate::cli::taskhost_with_env(&["run", wasm.to_str().unwrap()], &[], b"");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("libgreeter.rlib but no .wasm") && stderr.contains("cdylib"), "{stderr}");
}

/// A component whose only import is the `wasi:http/outgoing-handler`
/// instance (with a function, as a real one has).
fn http_component() -> Vec<u8> {
    use wasm_encoder::{
        Component, ComponentImportSection, ComponentTypeRef, ComponentTypeSection, InstanceType, PrimitiveValType,
    };
    let mut types = ComponentTypeSection::new();
    let mut instance = InstanceType::new();
    instance.ty().function().params([("x", PrimitiveValType::U32)]).result(None);
    instance.export("handle", ComponentTypeRef::Func(0));
    types.instance(&instance);
    let mut imports = ComponentImportSection::new();
    imports.import("wasi:http/outgoing-handler@0.2.0", ComponentTypeRef::Instance(0));
    let mut component = Component::new();
    component.section(&types).section(&imports);
    component.finish()
}
