//! The PostgreSQL store over TLS, against a throwaway server that takes TCP
//! connections only over TLS (`taskhost_test_postgres::tls_cluster`).

use super::*;

/// `tls_cluster`'s URL for a new database, verifying the server against
/// authority file `ca`.
fn url(name: &str, ca: impl FnOnce(&taskhost_test_postgres::Tls) -> &std::path::Path) -> (String, String) {
    let cluster = taskhost_test_postgres::tls_cluster();
    let tls = cluster.tls().expect("the TLS cluster has TLS");
    let db = cluster.new_database(name);
    let url = cluster.tcp_url(&db).unwrap();
    let url = format!("{url}?sslmode=verify-full&sslrootcert={}", ca(tls).display());
    (url, tls.password.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_reaches_its_database_over_tls_verifying_the_server() {
    let (url, _) = url("tls", |tls| &tls.ca);
    let store = PgStore::connect(&url, 2).await.unwrap();
    let encrypted: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert!(encrypted, "the store's connection is not encrypted");
    // And it works as a store: migrated, a task in and out.
    let record = crate::store::tests::record(1, None);
    assert!(store.submit(record.clone(), b"in".to_vec()).await.unwrap().created);
    assert_eq!(store.get(record.id).await.unwrap().unwrap().id, record.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_whose_certificate_is_not_trusted_is_refused_without_echoing_the_password() {
    let (url, password) = url("tls_untrusted", |tls| &tls.other_ca);
    let error = PgStore::connect(&url, 2).await.unwrap_err();
    let text = error.to_string();
    assert!(matches!(error, PgError::Connect { .. }), "{error:?}");
    assert!(text.contains("certificate"), "{text}");
    assert!(text.contains("localhost, port"), "{text}");
    assert!(!text.contains(&password), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_required_of_a_server_without_it_is_refused() {
    // The tests' usual server listens on a Unix socket only, without TLS.
    let url = taskhost_test_postgres::cluster().database("tls_required");
    let error = PgStore::connect(&format!("{url}&sslmode=require"), 2).await.unwrap_err();
    assert!(matches!(error, PgError::Connect { .. }), "{error:?}");
    assert!(error.to_string().to_lowercase().contains("tls"), "{error}");
}
