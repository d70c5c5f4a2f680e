//! This host among the hosts serving the store: what it says of itself
//! (version, start, models, load), its heartbeat to a shared store every
//! [`EVERY`], and `GET /v1/hosts`'s list of every host with its
//! heartbeat's age. On redb the one host answers for itself.

use super::shared::Shared;
use crate::store::postgres::HostRow;
use crate::sync::lock;
use crate::wire::{Host, HostList, HostLoad, HostModel, HostReport};
use std::sync::Arc;
use std::time::Duration;

/// How often a host writes its heartbeat.
pub(crate) const EVERY: Duration = Duration::from_secs(2);

/// A host is live while its last heartbeat is younger than this: several
/// missed beats, so a busy database does not flap it.
pub(crate) const LIVE_WITHIN: Duration = Duration::from_secs(10);

/// How long a stopping host waits to remove its heartbeat.
pub(crate) const LEAVE_GRACE: Duration = Duration::from_secs(5);

/// What this host says of itself now.
pub(crate) fn report(shared: &Shared) -> HostReport {
    let models = shared.config.models.as_ref().map_or_else(Vec::new, |models| {
        models
            .view()
            .models
            .into_iter()
            .map(|m| HostModel::new(m.name, m.state == crate::inference::ModelState::Ready, m.running_on))
            .collect()
    });
    let ready: usize = lock(&shared.sched).depths().iter().map(|(_, depth)| depth.ready).sum();
    let gate = &shared.gate;
    let load =
        HostLoad::new(gate.slot_count() as u64, gate.busy_slots() as u64, ready as u64, gate.budget(), gate.reserved());
    HostReport::new(env!("CARGO_PKG_VERSION").to_owned(), crate::wire::time(shared.started_ms), models, load)
}

/// Writes this host's heartbeat to a shared store every [`EVERY`] until
/// `stop` is sent (or dropped: the engine is gone), then removes it
/// (within [`LEAVE_GRACE`]). The engine stops it once its running tasks
/// ended, so a draining host stays listed with them. A write in flight is
/// given up when `stop` comes, so a database that does not answer never
/// holds the engine's close. A failed write is logged once until one
/// succeeds again. On redb there is nothing to write.
pub(crate) async fn run(shared: Arc<Shared>, mut stop: tokio::sync::oneshot::Receiver<()>) {
    if shared.store.redb().is_some() {
        let _ = stop.await;
        return;
    }
    let mut failing = false;
    loop {
        let report = match serde_json::to_value(report(&shared)) {
            Ok(report) => report,
            Err(error) => {
                tracing::error!(%error, "cannot encode this host's report; its heartbeat is not written");
                serde_json::Value::Null
            }
        };
        tokio::select! {
            _ = &mut stop => break,
            written = shared.store.beat(&report), if !report.is_null() => match written {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!("this host's heartbeat is written again");
                }
                Ok(()) => {}
                Err(error) if !failing => {
                    failing = true;
                    tracing::warn!(%error, "cannot write this host's heartbeat; other hosts see it as not live meanwhile");
                }
                Err(_) => {}
            },
        }
        tokio::select! {
            _ = &mut stop => break,
            () = tokio::time::sleep(EVERY) => {}
        }
    }
    match tokio::time::timeout(LEAVE_GRACE, shared.store.leave()).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%error, "cannot remove this host's heartbeat; it ages out"),
        Err(_) => tracing::warn!("removing this host's heartbeat took too long; it ages out"),
    }
}

/// Every host serving the store, by id: on a shared store its rows, with
/// this host's own report in place of its last heartbeat's; on redb this
/// host alone. With the plugins no live host serves (see `routing.rs`).
pub(crate) async fn list(shared: &Shared) -> Result<HostList, crate::store::StoreError> {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let this = || Host::new(shared.host.clone(), true, true, 0, Some(report(shared)));
    let hosts = match shared.store.hosts().await? {
        None => vec![this()],
        Some(rows) => {
            let mut hosts: Vec<Host> = rows
                .into_iter()
                .map(|HostRow { host, age, report }| {
                    if host == shared.host {
                        // Fresher than its row, and live while it answers.
                        return Host::new(host, true, true, ms(age), Some(self::report(shared)));
                    }
                    let report = serde_json::from_value(report).ok();
                    Host::new(host, false, age < LIVE_WITHIN, ms(age), report)
                })
                .collect();
            // Before its first heartbeat (or after its row was lost), this
            // host still answers.
            if !hosts.iter().any(|h| h.this) {
                hosts.push(this());
                hosts.sort_by(|a, b| a.id.cmp(&b.id));
            }
            hosts
        }
    };
    let unserved = super::routing::unserved(shared, &hosts);
    Ok(HostList::new(hosts, ms(EVERY), ms(LIVE_WITHIN)).with_unserved(unserved))
}
