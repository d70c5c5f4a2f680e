//! Property tests of the flow spec parser: hostile JSON never panics and a
//! plan that comes out is always a well-formed DAG; valid step trees plan
//! to exactly their steps in their declared order.

use super::super::{next_cron, spec_json};
use super::*;
use crate::arbitrary_json::{self as aj, fields, opt};
use crate::store::now_ms;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::json;
use std::collections::HashSet;

/// The keys the spec knows, at any level.
const KEYS: &[&str] = &[
    "name",
    "steps",
    "series",
    "parallel",
    "id",
    "plugin",
    "input",
    "after",
    "queue",
    "priority",
    "repeat",
    "times",
    "until_stop",
    "every_ms",
    "cron",
    "max_iterations",
    "max_attempts",
    "timeout_ms",
];

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

/// A step id: a few shared names (so `after` finds them, collides and
/// cycles), defaults' names.
fn id() -> BoxedStrategy<Value> {
    select(&["a", "b", "c", "d", "e", "f", "step-1", "step-2", "step-3"][..]).prop_map(Value::from).boxed()
}

/// `right`; with `junk`, now and then any JSON (usually the wrong type).
fn typed(junk: bool, right: impl Strategy<Value = Value> + 'static) -> BoxedStrategy<Value> {
    if junk { prop_oneof![24 => right, 1 => aj::value(KEYS)].boxed() } else { right.boxed() }
}

/// A number in `range`; with `junk`, now and then an edge of any type.
fn int(junk: bool, range: std::ops::RangeInclusive<u64>) -> BoxedStrategy<Value> {
    let right = range.prop_map(Value::from);
    if junk { prop_oneof![12 => right, 1 => aj::number()].boxed() } else { right.boxed() }
}

/// A step object: fields of the right type; with `junk`, wrong types,
/// out-of-range numbers and stray keys mixed in.
fn step(junk: bool) -> BoxedStrategy<Value> {
    let plugin = if junk {
        prop_oneof![16 => Just(Some(json!("p"))), 1 => aj::scalar().prop_map(Some), 1 => Just(None)].boxed()
    } else {
        Just(Some(json!("p"))).boxed()
    };
    (
        plugin,
        opt(0.35, typed(junk, id())),
        opt(0.25, typed(junk, vec(id(), 0..3).prop_map(Value::Array))),
        opt(0.15, typed(junk, select(&["q", "default", "a b"][..]).prop_map(Value::from))),
        opt(0.15, int(junk, 0..=9)),
        opt(0.15, aj::value(KEYS)),
        opt(0.1, int(junk, 0..=200)),
        opt(0.1, int(junk, 0..=100_000)),
        if junk { opt(0.03, (aj::key(KEYS), aj::scalar())) } else { Just(None).boxed() },
    )
        .prop_map(|(plugin, id, after, queue, priority, input, max_attempts, timeout_ms, extra)| {
            let mut step = fields(vec![
                ("plugin", plugin),
                ("id", id),
                ("after", after),
                ("queue", queue),
                ("priority", priority),
                ("input", input),
                ("max_attempts", max_attempts),
                ("timeout_ms", timeout_ms),
            ]);
            if let Some((k, v)) = extra {
                step[k] = v;
            }
            step
        })
        .boxed()
}

/// Steps `a`, `b`, ... side by side or in series, each waiting for some
/// of the others: cycles, self-waits and forward waits.
fn tangle() -> BoxedStrategy<Value> {
    const IDS: [&str; 5] = ["a", "b", "c", "d", "e"];
    (1..=IDS.len())
        .prop_flat_map(|n| (vec(vec(0..n, 0..3), n), any::<bool>()))
        .prop_map(|(afters, parallel)| {
            let steps: Vec<Value> = afters
                .iter()
                .enumerate()
                .map(|(i, after)| {
                    let after: Vec<&str> = after.iter().map(|&j| IDS[j]).collect();
                    json!({"id": IDS[i], "plugin": "p", "after": after})
                })
                .collect();
            if parallel { json!({"parallel": steps}) } else { json!({"series": steps}) }
        })
        .boxed()
}

/// A step tree: series, parallels and lists of steps; with `junk`, junk
/// nodes and series or parallels with other keys too.
fn node(junk: bool) -> BoxedStrategy<Value> {
    let leaf = if junk {
        prop_oneof![40 => step(true), 4 => tangle(), 1 => aj::value(KEYS)].boxed()
    } else {
        prop_oneof![10 => step(false), 1 => tangle()].boxed()
    };
    leaf.prop_recursive(5, 48, 5, move |inner| {
        let plain = prop_oneof![
            vec(inner.clone(), 0..5).prop_map(|v| json!({"series": v})),
            vec(inner.clone(), 0..5).prop_map(|v| json!({"parallel": v})),
            vec(inner.clone(), 0..5).prop_map(Value::Array),
        ];
        if !junk {
            return plain.boxed();
        }
        let mixed = (vec(inner, 0..4), select(&["series", "parallel"][..]), aj::key(KEYS), aj::value(KEYS)).prop_map(
            |(v, kind, k, x)| {
                let mut node = json!({kind: v});
                node[k] = x;
                node
            },
        );
        prop_oneof![9 => plain, 1 => mixed].boxed()
    })
    .boxed()
}

/// Cron-like text: fields from the grammar's pieces, some out of range.
fn cron() -> BoxedStrategy<Value> {
    let piece = select(
        &[
            "*",
            "?",
            "0",
            "1",
            "7",
            "23",
            "31",
            "59",
            "60",
            "*/5",
            "*/0",
            "1-3",
            "3-1",
            "1,2",
            "L",
            "W",
            "#",
            "MON",
            "JAN",
            "2100",
            "1969",
            "99999999999",
        ][..],
    );
    prop_oneof![
        4 => vec(piece, 5..9).prop_map(|p| Value::from(p.join(" "))),
        1 => aj::text().prop_map(Value::from),
        1 => aj::scalar(),
    ]
    .boxed()
}

fn repeat() -> BoxedStrategy<Value> {
    let kind = prop_oneof![
        int(true, 0..=5).prop_map(|n| json!({"times": n})),
        Just(json!({"until_stop": true})),
        int(true, 0..=100).prop_map(|ms| json!({"every_ms": ms})),
        cron().prop_map(|c| json!({"cron": c})),
    ];
    prop_oneof![
        6 => (kind, opt(0.3, int(true, 0..=10))).prop_map(|(mut rule, max)| {
            if let Some(max) = max {
                rule["max_iterations"] = max;
            }
            rule
        }),
        6 => (
            opt(0.4, aj::number()),
            opt(0.2, prop_oneof![4 => any::<bool>().prop_map(Value::Bool), 1 => aj::scalar()]),
            opt(0.4, aj::number()),
            opt(0.4, cron()),
            opt(0.3, aj::number()),
            opt(0.05, (aj::key(KEYS), aj::scalar())),
        )
            .prop_map(|(times, until_stop, every_ms, cron, max_iterations, extra)| {
                let mut r = fields(vec![
                    ("times", times),
                    ("until_stop", until_stop),
                    ("every_ms", every_ms),
                    ("cron", cron),
                    ("max_iterations", max_iterations),
                ]);
                if let Some((k, v)) = extra {
                    r[k] = v;
                }
                r
            }),
        1 => aj::value(KEYS),
    ]
    .boxed()
}

/// A whole posted spec: spec-shaped, with or without junk mixed in, or
/// any JSON at all.
fn spec_value() -> BoxedStrategy<Value> {
    prop_oneof![8 => shaped(false), 8 => shaped(true), 1 => aj::value(KEYS)].boxed()
}

fn shaped(junk: bool) -> BoxedStrategy<Value> {
    let steps = prop_oneof![3 => node(junk), 3 => vec(node(junk), 0..6).prop_map(Value::Array), 2 => tangle()];
    (
        opt(0.97, steps),
        opt(0.3, repeat()),
        opt(0.2, typed(junk, aj::text().prop_map(Value::from))),
        opt(0.2, typed(junk, select(&["q", "default", "a b"][..]).prop_map(Value::from))),
        opt(0.2, int(junk, 0..=9)),
        opt(0.2, aj::value(KEYS)),
        if junk { opt(0.03, (aj::key(KEYS), aj::scalar())) } else { Just(None).boxed() },
    )
        .prop_map(|(steps, repeat, name, queue, priority, input, extra)| {
            let mut spec = fields(vec![
                ("steps", steps),
                ("repeat", repeat),
                ("name", name),
                ("queue", queue),
                ("priority", priority),
                ("input", input),
            ]);
            if let Some((k, v)) = extra {
                spec[k] = v;
            }
            spec
        })
        .boxed()
}

/// Steps in a step tree.
fn leaves(node: &Node) -> usize {
    match node {
        Node::Step(_) => 1,
        Node::Series { series: nodes } | Node::List(nodes) | Node::Parallel { parallel: nodes } => {
            nodes.iter().map(leaves).sum()
        }
    }
}

/// The parsed tree is the posted one, nothing dropped: each series or
/// parallel node came from an object with that one key, each list from
/// an array of as many nodes, each step from an object with a plugin
/// (`Step` itself refuses unknown keys).
fn same_tree(node: &Node, value: &Value) -> Result<(), TestCaseError> {
    let (items, key) = match node {
        Node::Series { series: nodes } => (nodes, Some("series")),
        Node::Parallel { parallel: nodes } => (nodes, Some("parallel")),
        Node::List(nodes) => (nodes, None),
        Node::Step(_) => {
            prop_assert!(value.get("plugin").is_some(), "a step parsed from {}", value);
            return Ok(());
        }
    };
    let array = match key {
        Some(key) => {
            let only = value.as_object().is_some_and(|o| o.len() == 1 && o.contains_key(key));
            prop_assert!(only, "a `{}` node parsed from {}", key, value);
            &value[key]
        }
        None => value,
    };
    let values = array.as_array().ok_or_else(|| TestCaseError::fail(format!("nodes parsed from {array}")))?;
    prop_assert_eq!(values.len(), items.len());
    for (n, v) in items.iter().zip(values) {
        same_tree(n, v)?;
    }
    Ok(())
}

/// Checks what every successful plan must be: as many tasks as the tree
/// has steps, unique names that pass the one name rule, every dependency
/// on an earlier task (so a DAG in topological order) and listed once,
/// every `after` name honoured.
fn check_plan(spec: &FlowSpec, plan: &[Planned]) -> Result<(), TestCaseError> {
    prop_assert!(!plan.is_empty());
    prop_assert_eq!(plan.len(), leaves(&spec.steps));
    let mut names = HashMap::new();
    for (pos, p) in plan.iter().enumerate() {
        let valid = crate::names::name(crate::names::NameKind::Step, &p.name);
        prop_assert!(valid.is_ok(), "name {:?}: {:?}", p.name, valid);
        prop_assert!(names.insert(p.name.as_str(), pos).is_none(), "duplicate name {:?}", p.name);
        let unique: HashSet<usize> = p.after.iter().copied().collect();
        prop_assert_eq!(unique.len(), p.after.len(), "duplicate dependency of {}", p.name);
        prop_assert!(p.after.iter().all(|&a| a < pos), "{} at {} waits for {:?}", p.name, pos, p.after);
    }
    for p in plan {
        for name in &p.step.after {
            let j = names.get(name.as_str()).copied();
            prop_assert!(j.is_some_and(|j| p.after.contains(&j)), "{} does not wait for {}", p.name, name);
        }
    }
    Ok(())
}

/// The plan as comparable data: (name, plugin, names waited for).
fn shape(plan: &[Planned]) -> Vec<(String, String, Vec<String>)> {
    plan.iter()
        .map(|p| (p.name.clone(), p.step.plugin.clone(), p.after.iter().map(|&i| plan[i].name.clone()).collect()))
        .collect()
}

/// A repeating flow stores `spec_json(spec)` and plans each later
/// iteration from it: that must give the same plan.
fn check_stored_spec_replans(spec: &FlowSpec, plan: &[Planned]) -> Result<(), TestCaseError> {
    let stored = serde_json::to_string(&spec_json(spec)).unwrap();
    let reparsed: FlowSpec =
        serde_json::from_str(&stored).map_err(|e| TestCaseError::fail(format!("{e}: {stored}")))?;
    let replanned = reparsed.plan(u64::MAX).map_err(TestCaseError::fail)?;
    prop_assert_eq!(shape(&replanned), shape(plan));
    Ok(())
}

fn check_repeat(spec: &FlowSpec) -> Result<(), TestCaseError> {
    let result = spec.repeat();
    let Some(r) = &spec.repeat else {
        prop_assert!(matches!(result, Ok(None)));
        return Ok(());
    };
    let set = usize::from(r.times.is_some())
        + usize::from(r.until_stop)
        + usize::from(r.every_ms.is_some())
        + usize::from(r.cron.is_some());
    match result {
        Ok(Some(rule)) => {
            prop_assert_eq!(set, 1);
            prop_assert_eq!(rule.max_iterations, r.max_iterations);
            match rule.kind {
                RepeatKind::Times(n) => prop_assert!(n >= 1 && r.times == Some(n)),
                RepeatKind::UntilStop => prop_assert!(r.until_stop),
                RepeatKind::EveryMs(ms) => prop_assert!(ms >= 10 && r.every_ms == Some(ms)),
                RepeatKind::Cron(expr) => {
                    prop_assert_eq!(Some(&expr), r.cron.as_ref());
                    // Later fire times are computed from now and far ahead:
                    // they may fail, never panic.
                    for after in [now_ms(), 253_402_300_799_000, u64::MAX] {
                        let _ = next_cron(&expr, after);
                    }
                }
            }
        }
        Ok(None) => prop_assert!(false, "a repeat object gave no rule"),
        Err(_) => {}
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(512))]

    /// Random JSON never panics the parser, the planner or the repeat
    /// check, and what plans is a DAG within the limit.
    #[test]
    fn random_json_never_panics_and_plans_are_dags(value in spec_value(), limit in 0u64..24) {
        let Ok(spec) = serde_json::from_value::<FlowSpec>(value.clone()) else { return Ok(()) };
        same_tree(&spec.steps, &value["steps"])?;
        check_repeat(&spec)?;
        let unlimited = spec.plan(u64::MAX);
        let limited = spec.plan(limit);
        match &unlimited {
            Ok(plan) => {
                check_plan(&spec, plan)?;
                check_stored_spec_replans(&spec, plan)?;
                // The limit refuses exactly the plans longer than it.
                match &limited {
                    Ok(small) => {
                        prop_assert!(small.len() as u64 <= limit);
                        prop_assert_eq!(shape(small), shape(plan));
                    }
                    Err(e) => {
                        prop_assert!(plan.len() as u64 > limit, "refused under the limit: {}", e);
                        prop_assert!(e.contains("at most"), "{}", e);
                    }
                }
            }
            Err(e) => {
                prop_assert!(!e.is_empty());
                prop_assert!(limited.is_err(), "planned under a limit, not without one");
            }
        }
    }

    /// Nesting as deep as an API body can carry (serde_json stops at 128)
    /// parses and plans without overflowing the stack.
    #[test]
    fn deep_nesting_is_refused_or_planned(depth in 0usize..140, parallel in any::<bool>()) {
        let kind = if parallel { "parallel" } else { "series" };
        let text = format!("{}{}{}", format!("{{\"{kind}\": [").repeat(depth), r#"{"plugin": "p"}"#, "]}".repeat(depth));
        let Ok(value) = serde_json::from_str::<Value>(&format!(r#"{{"steps": {text}}}"#)) else {
            prop_assert!(depth >= 60, "depth {} refused", depth);
            return Ok(());
        };
        let spec: FlowSpec = serde_json::from_value(value).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let plan = spec.plan(10).map_err(TestCaseError::fail)?;
        check_plan(&spec, &plan)?;
    }
}

/// A valid step tree: series, parallels (never empty) and plain lists.
#[derive(Debug, Clone)]
enum Tree {
    Step,
    Series(Vec<Tree>),
    Parallel(Vec<Tree>),
    List(Vec<Tree>),
}

fn tree() -> impl Strategy<Value = Tree> {
    Just(Tree::Step).prop_recursive(5, 40, 5, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..5).prop_map(Tree::Series),
            vec(inner.clone(), 1..5).prop_map(Tree::Parallel),
            vec(inner, 0..5).prop_map(Tree::List),
        ]
    })
}

/// Renders the tree as spec JSON; step k (declaration order) is named
/// `s{k}` or left to the default `step-{k+1}`, and waits explicitly for
/// `extra[k]`. Returns each step's name, and for each tree node the steps
/// in it (to check orders against).
struct Rendered {
    json: Value,
    names: Vec<String>,
    /// (series or not, the steps of each child) for every inner node.
    groups: Vec<(bool, Vec<Vec<usize>>)>,
}

fn render(tree: &Tree, named: &[bool], extra: &[Vec<usize>]) -> Rendered {
    fn walk(t: &Tree, named: &[bool], extra: &[Vec<usize>], out: &mut Rendered) -> (Value, Vec<usize>) {
        match t {
            Tree::Step => {
                let k = out.names.len();
                let name = if named[k % named.len()] { format!("s{k}") } else { format!("step-{}", k + 1) };
                let explicit = named[k % named.len()];
                out.names.push(name);
                let after: Vec<String> = extra[k].iter().map(|&j| out.names[j].clone()).collect();
                let mut step = json!({"plugin": format!("p{k}")});
                if explicit {
                    step["id"] = json!(out.names[k]);
                }
                if !after.is_empty() {
                    step["after"] = json!(after);
                }
                (step, vec![k])
            }
            Tree::Series(children) | Tree::Parallel(children) | Tree::List(children) => {
                let mut values = Vec::new();
                let mut groups = Vec::new();
                for c in children {
                    let (v, steps) = walk(c, named, extra, out);
                    values.push(v);
                    groups.push(steps);
                }
                let all = groups.concat();
                let series = !matches!(t, Tree::Parallel(_));
                out.groups.push((series, groups));
                let json = match t {
                    Tree::Series(_) => json!({"series": values}),
                    Tree::Parallel(_) => json!({"parallel": values}),
                    _ => Value::Array(values),
                };
                (json, all)
            }
        }
    }
    let mut out = Rendered { json: Value::Null, names: Vec::new(), groups: Vec::new() };
    let (json, _) = walk(tree, named, extra, &mut out);
    out.json = json!({"steps": json});
    out
}

fn count(tree: &Tree) -> usize {
    match tree {
        Tree::Step => 1,
        Tree::Series(c) | Tree::Parallel(c) | Tree::List(c) => c.iter().map(count).sum(),
    }
}

/// A valid tree, whether each step is named, and for each step some
/// earlier steps it explicitly waits for (only when `with_after`).
fn valid() -> impl Strategy<Value = (Tree, Vec<bool>, Vec<Vec<usize>>)> {
    (tree(), vec(any::<bool>(), 1..48), any::<bool>()).prop_flat_map(|(tree, named, with_after)| {
        let n = count(&tree);
        let extra = (0..n)
            .map(move |k| if with_after && k > 0 { vec(0..k, 0..3).boxed() } else { Just(Vec::new()).boxed() })
            .collect::<Vec<_>>();
        (Just(tree), Just(named), extra)
    })
}

proptest! {
    #![proptest_config(config(256))]

    /// A valid spec plans to exactly its steps; every step of a series'
    /// child runs after every step of the children before it; steps of
    /// different parallel branches never wait for each other (unless an
    /// explicit `after` says so); explicit waits are direct dependencies.
    #[test]
    fn valid_specs_plan_their_steps_in_series_order((tree, named, extra) in valid()) {
        let rendered = render(&tree, &named, &extra);
        let spec: FlowSpec = serde_json::from_value(rendered.json.clone()).unwrap();
        let steps = rendered.names.len();
        if steps == 0 {
            prop_assert!(spec.plan(u64::MAX).unwrap_err().contains("no steps"));
            return Ok(());
        }
        let plan = spec.plan(steps as u64).map_err(TestCaseError::fail)?;
        check_plan(&spec, &plan)?;
        check_stored_spec_replans(&spec, &plan)?;
        prop_assert_eq!(plan.len(), steps);
        if steps > 1 {
            prop_assert!(spec.plan(steps as u64 - 1).is_err());
        }
        // Declaration index of each planned step, and ancestors by index.
        let index: HashMap<&str, usize> = rendered.names.iter().enumerate().map(|(k, n)| (n.as_str(), k)).collect();
        let mut ancestors: Vec<HashSet<usize>> = vec![HashSet::new(); steps];
        for p in &plan {
            let k = index[p.name.as_str()];
            prop_assert_eq!(&p.step.plugin, &format!("p{k}"));
            let mut set = HashSet::new();
            for &a in &p.after {
                let j = index[plan[a].name.as_str()];
                set.insert(j);
                set.extend(ancestors[j].iter().copied());
            }
            for &j in &extra[k] {
                prop_assert!(p.after.iter().any(|&a| plan[a].name == rendered.names[j]));
            }
            ancestors[k] = set;
        }
        let explicit = extra.iter().any(|e| !e.is_empty());
        for (series, children) in &rendered.groups {
            for (x, first) in children.iter().enumerate() {
                for second in &children[x + 1..] {
                    for &a in first {
                        for &b in second {
                            if *series {
                                prop_assert!(ancestors[b].contains(&a), "{} does not follow {}", rendered.names[b], rendered.names[a]);
                            } else if !explicit {
                                prop_assert!(!ancestors[b].contains(&a) && !ancestors[a].contains(&b),
                                    "parallel {} and {} are ordered", rendered.names[a], rendered.names[b]);
                            }
                        }
                    }
                }
            }
        }
    }
}
