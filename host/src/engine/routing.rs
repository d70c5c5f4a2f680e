//! Routing by capability, for hosts serving one database together: a
//! plugin whose manifest names models (`models = [...]`) runs only on a
//! host that serves every one of them (loaded and ready), like a GPU
//! assignment table. Claims leave its tasks to such hosts
//! ([`leave_to_others`]), and `GET /v1/hosts` names the plugins that no
//! live host serves ([`unserved`]): their tasks wait until one does.
//!
//! What a plugin needs is its manifest's `models`, the operator's grant
//! (the registry, synced across hosts). A models file's own `plugins`
//! grants are each host's and route nothing. A host serving alone routes
//! nothing: it runs every task, and a call to a model it lacks fails as on
//! redb.

use super::shared::Shared;
use crate::wire::{Host, UnservedPlugin};

/// The models this host serves now (loaded and ready), sorted.
fn serving(shared: &Shared) -> Vec<String> {
    shared.config.models.as_ref().map_or_else(Vec::new, crate::inference::Models::serving)
}

/// The plugins whose tasks this host leaves to others: serving with other
/// hosts, those needing a model it does not serve; serving alone, none.
pub(crate) fn leave_to_others(shared: &Shared) -> Vec<String> {
    if !shared.config.many_hosts {
        return Vec::new();
    }
    beyond(&shared.runner.model_needs(), &serving(shared))
}

/// Serving with other hosts, the plugins of those that need models
/// (`needs`, by plugin) whose tasks none of `hosts` that is live and
/// serving can run; serving alone, none.
pub(crate) fn unserved(shared: &Shared, hosts: &[Host]) -> Vec<UnservedPlugin> {
    if !shared.config.many_hosts {
        return Vec::new();
    }
    unserved_by(shared.runner.model_needs(), hosts)
}

/// The plugins of `needs` that need a model outside `serving`.
fn beyond(needs: &[(String, Vec<String>)], serving: &[String]) -> Vec<String> {
    needs
        .iter()
        .filter(|(_, models)| models.iter().any(|m| !serving.contains(m)))
        .map(|(plugin, _)| plugin.clone())
        .collect()
}

/// The plugins of `needs` that no live, serving host of `hosts` serves
/// all the models of (by their reports' ready models).
fn unserved_by(needs: Vec<(String, Vec<String>)>, hosts: &[Host]) -> Vec<UnservedPlugin> {
    let serving: Vec<Vec<String>> = hosts
        .iter()
        .filter(|h| h.live)
        .filter_map(|h| h.report.as_ref())
        .filter(|r| r.role == crate::wire::HostRole::Serving)
        .map(|r| r.models.iter().filter(|m| m.ready).map(|m| m.name.clone()).collect())
        .collect();
    needs
        .into_iter()
        .filter(|(_, models)| serving.iter().all(|served| models.iter().any(|m| !served.contains(m))))
        .map(|(plugin, models)| UnservedPlugin::new(plugin, models))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{HostLoad, HostModel, HostReport};

    fn needs(list: &[(&str, &[&str])]) -> Vec<(String, Vec<String>)> {
        list.iter().map(|(p, m)| (p.to_string(), m.iter().map(|m| m.to_string()).collect())).collect()
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_host_leaves_the_plugins_needing_a_model_it_does_not_serve() {
        let needs = needs(&[("embed", &["minilm"]), ("t/rank", &["minilm", "ranker"])]);
        assert_eq!(beyond(&needs, &[]), ["embed", "t/rank"]);
        assert_eq!(beyond(&needs, &names(&["minilm"])), ["t/rank"], "every model it names");
        assert!(beyond(&needs, &names(&["ranker", "other", "minilm"])).is_empty());
    }

    fn host(id: &str, live: bool, models: &[(&str, bool)], standby: bool) -> Host {
        let models = models.iter().map(|(m, ready)| HostModel::new(m.to_string(), *ready, None)).collect();
        let mut report = HostReport::new("v".into(), "t".into(), models, HostLoad::new(1, 0, 0, 0, 0));
        if standby {
            report = report.standing_by();
        }
        Host::new(id.into(), false, live, 0, Some(report))
    }

    #[test]
    fn a_plugin_is_unserved_while_no_live_serving_host_serves_all_its_models() {
        let needs = needs(&[("embed", &["minilm"]), ("t/rank", &["minilm", "ranker"])]);
        let plugins = |hosts: &[Host]| -> Vec<String> {
            unserved_by(needs.clone(), hosts).into_iter().map(|u| u.plugin).collect()
        };
        assert_eq!(plugins(&[]), ["embed", "t/rank"]);
        // Models split over two hosts serve no task that needs both.
        let split = [host("a", true, &[("minilm", true)], false), host("b", true, &[("ranker", true)], false)];
        assert_eq!(plugins(&split), ["t/rank"]);
        // A host not live, standing by, or whose model failed serves none.
        let not = [
            host("dead", false, &[("minilm", true), ("ranker", true)], false),
            host("standby", true, &[("minilm", true), ("ranker", true)], true),
            host("failed", true, &[("minilm", true), ("ranker", false)], false),
        ];
        assert_eq!(plugins(&not), ["t/rank"]);
        let both = [host("gpu", true, &[("ranker", true), ("minilm", true)], false)];
        assert!(plugins(&both).is_empty());
        let unserved = unserved_by(needs.clone(), &split);
        assert_eq!(unserved, [UnservedPlugin::new("t/rank".into(), names(&["minilm", "ranker"]))]);
    }
}
