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
