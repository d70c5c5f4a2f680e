//! Fixture: runs a script of flow calls given as its JSON input and reports
//! what each returned. Actions (`$N` in an id list is the Nth id submitted
//! by this script):
//! `{"submit": CHILD}`, `{"fanout": {"n": N, "plugin": P, "input": S}}`,
//! `{"join": ["$0", ID...] | "all", "then": CHILD}`, `{"get": ID}`,
//! `"joined"`, `"joined_count"`, `"stop"`, `{"set": [K, V]}`, `{"get_ctx": K}`,
//! `{"delete": K}`, `{"keys": PREFIX}`, `{"fail_before_attempt": [N, MSG]}`,
//! `{"count_until": N}` (bumps context `count`; stops the repeat at N).
//! CHILD is `{"plugin", "input"?, "key"?, "queue"?, "priority"?, "delay_ms"?}`.

use serde::Deserialize;
use serde_json::{Value, json};
use taskhost_sdk::flow::{self, Child, TaskId};
use taskhost_sdk::{Error, Json, Result, context, task_info};

#[derive(Deserialize)]
struct Spec {
    plugin: String,
    #[serde(default)]
    input: String,
    key: Option<String>,
    queue: Option<String>,
    priority: Option<u8>,
    delay_ms: Option<u64>,
}

fn child(s: Spec) -> Child {
    let mut c = Child::new(s.plugin).input(s.input);
    if let Some(k) = s.key {
        c = c.key(k)
    }
    if let Some(q) = s.queue {
        c = c.queue(q)
    }
    if let Some(p) = s.priority {
        c = c.priority(p)
    }
    if let Some(ms) = s.delay_ms {
        c = c.delay(std::time::Duration::from_millis(ms))
    }
    c
}

fn ids(v: &Value, mine: &[TaskId]) -> Vec<TaskId> {
    match v {
        Value::String(all) if all == "all" => mine.to_vec(),
        Value::Array(list) => list
            .iter()
            .map(|i| i.as_str().unwrap_or_default())
            .map(|i| match i.strip_prefix('$') {
                Some(n) => mine[n.parse::<usize>().unwrap()].clone(),
                None => TaskId(i.to_owned()),
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn outcome(o: &flow::Outcome) -> Value {
    let output = o.output.as_ref().map(|b| String::from_utf8_lossy(b).into_owned());
    let status = match o.status {
        flow::Status::Pending => "pending",
        flow::Status::Running => "running",
        flow::Status::Retrying => "retrying",
        flow::Status::Completed => "completed",
        flow::Status::Failed => "failed",
        flow::Status::Cancelled => "cancelled",
    };
    json!({"id": o.id.0, "status": status, "output": output, "error": o.error})
}

fn shown<T: Into<Value>>(r: Result<T>) -> Value {
    r.map_or_else(|e| json!({"error": e.to_string()}), Into::into)
}

#[taskhost_sdk::plugin]
fn flow_probe(Json(script): Json<Vec<Value>>) -> Result<Json<Vec<Value>>> {
    let (mut mine, mut out) = (Vec::<TaskId>::new(), Vec::new());
    for action in script {
        let result = match action {
            Value::String(a) if a == "joined" => flow::joined().iter().map(outcome).collect(),
            Value::String(a) if a == "joined_count" => {
                let all = flow::joined();
                let done = all.iter().filter(|o| o.status == flow::Status::Completed).count();
                json!({"completed": done, "total": all.len()})
            }
            Value::String(a) if a == "stop" => {
                flow::stop_repeating();
                Value::Null
            }
            Value::Object(mut o) => {
                let (name, arg) = o.iter_mut().next().map(|(k, v)| (k.clone(), v.take())).unwrap_or_default();
                match name.as_str() {
                    "submit" => shown(
                        serde_json::from_value(arg).map_err(Error::permanent).and_then(|s| child(s).submit()).map(
                            |id| {
                                mine.push(id.clone());
                                id.0
                            },
                        ),
                    ),
                    "fanout" => {
                        let n = arg["n"].as_u64().unwrap_or(0);
                        let (plugin, input) =
                            (arg["plugin"].as_str().unwrap_or(""), arg["input"].as_str().unwrap_or(""));
                        let mut refused = Vec::new();
                        for _ in 0..n {
                            match Child::new(plugin).input(input).submit() {
                                Ok(id) => mine.push(id),
                                Err(e) => refused.push(e.to_string()),
                            }
                        }
                        json!({"submitted": mine.len(), "refused": refused})
                    }
                    "join" => {
                        let then: Spec = serde_json::from_value(o["then"].take()).map_err(Error::permanent)?;
                        shown(flow::join(&ids(&arg, &mine), child(then)).map(|id| id.0))
                    }
                    "get" => shown(flow::get(&ids(&json!([arg]), &mine)[0]).map(|o| outcome(&o))),
                    "set" => {
                        shown(context::set(arg[0].as_str().unwrap_or(""), arg[1].as_str().unwrap_or("")).map(|()| "ok"))
                    }
                    "get_ctx" => json!(
                        context::get(arg.as_str().unwrap_or("")).map(|v| String::from_utf8_lossy(&v).into_owned())
                    ),
                    "delete" => json!(context::delete(arg.as_str().unwrap_or(""))),
                    "keys" => json!(context::keys(arg.as_str().unwrap_or(""))),
                    "count_until" => {
                        let n = context::get_json::<u64>("count")?.unwrap_or(0) + 1;
                        context::set_json("count", &n)?;
                        if n >= arg.as_u64().unwrap_or(1) {
                            flow::stop_repeating();
                        }
                        json!(n)
                    }
                    "fail_before_attempt" if task_info().attempt < arg[0].as_u64().unwrap_or(0) as u32 => {
                        return Err(Error::retryable(arg[1].as_str().unwrap_or("failing on purpose")));
                    }
                    "fail_before_attempt" => Value::Null,
                    other => return Err(Error::permanent(format!("unknown action `{other}`"))),
                }
            }
            other => return Err(Error::permanent(format!("unknown action {other}"))),
        };
        out.push(result);
    }
    Ok(Json(out))
}
