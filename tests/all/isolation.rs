//! No ambient authority: a plugin gets no files, no network, no environment.

use crate::{failure, output, run};
use std::io::Write;
use taskhost::FailureClass;
use taskhost_test_artifacts::{OPEN_SOCKET, READ_ENV, READ_FILE};

#[tokio::test]
async fn host_files_are_out_of_reach() {
    let mut secret = tempfile::NamedTempFile::new().unwrap();
    secret.write_all(b"TOP-SECRET-CONTENT").unwrap();
    let path = secret.path().to_str().unwrap().to_owned();
    for target in [path.as_str(), "/etc/passwd", "relative.txt"] {
        let report = run(READ_FILE, target, None).await;
        let failure = failure(&report);
        assert_eq!((failure.class, failure.retryable), (FailureClass::PluginError, false), "{target}: {failure}");
        assert!(failure.message.starts_with("filesystem denied"), "{target}: {}", failure.message);
        // A permission error, not "no such file": the guest can tell a
        // missing grant from a missing file.
        assert!(failure.message.contains("Permission denied"), "{target}: {}", failure.message);
        assert!(!failure.message.contains("TOP-SECRET"));
    }
}

#[tokio::test]
async fn sockets_and_name_lookup_are_denied() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    for target in [format!("127.0.0.1:{port}"), format!("localhost:{port}")] {
        let report = run(OPEN_SOCKET, &target, None).await;
        let failure = failure(&report);
        assert_eq!(failure.class, FailureClass::PluginError, "{target}: {failure}");
        assert!(failure.message.starts_with("network denied"), "{target}: {}", failure.message);
    }
    // Nothing reached the listener.
    assert_eq!(listener.accept().unwrap_err().kind(), std::io::ErrorKind::WouldBlock);
}

#[tokio::test]
async fn no_environment_and_no_arguments() {
    // The test process has plenty of environment (PATH, CARGO_*...).
    assert!(std::env::vars().count() > 0);
    assert_eq!(output(&run(READ_ENV, "", None).await), "[[],[]]");
}
