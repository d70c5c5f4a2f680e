//! The store backends the engine's, flows' and retention's integration
//! tests run on: a test written in [`on_both_stores!`] runs once on a
//! redb file in its engine's data directory and once on a new database of
//! the throwaway PostgreSQL cluster (`tests/postgres`), the same body on
//! the same engine. A test of those files written outside it says why it
//! holds for one backend only.

use taskhost::engine::StoreUrl;

/// Where a test's engines keep their state.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Backend {
    /// A redb file in each engine's data directory (the default).
    Redb,
    /// A new database of the throwaway cluster for each store asked for,
    /// named after the test.
    Postgres(&'static str),
}

impl Backend {
    /// A new, empty store for an engine's `store_url`: none for redb (the
    /// data directory's file), else a new database's URL.
    pub(crate) fn new_store(self) -> Option<StoreUrl> {
        match self {
            Backend::Redb => None,
            Backend::Postgres(name) => Some(StoreUrl::new(taskhost_test_postgres::cluster().database(name))),
        }
    }

    /// The backend's name, for assertion messages.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Backend::Redb => "redb",
            Backend::Postgres(_) => "PostgreSQL",
        }
    }
}

/// Runs each `async fn name(backend) { … }` as two tests, `name::redb`
/// and `name::postgres`, with `backend` a [`Backend`]. Both run on a
/// multi-threaded runtime, as `taskhost serve` does (a few of
/// PostgreSQL's reads wait in place).
macro_rules! on_both_stores {
    ($($(#[$attr:meta])* async fn $name:ident($backend:ident) $body:block)*) => {$(
        $(#[$attr])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn body($backend: crate::stores::Backend) $body

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redb() {
                body(crate::stores::Backend::Redb).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                body(crate::stores::Backend::Postgres(stringify!($name))).await;
            }
        }
    )*};
}
pub(crate) use on_both_stores;
