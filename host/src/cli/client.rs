//! The client commands (`submit`, `status`, `cancel`, `tasks`, `plugins`,
//! `queues`): thin wrappers over the HTTP API.

use super::{EXIT_TASK_FAILED, EXIT_USAGE, fail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// How to reach the server.
#[derive(Debug, Args, Clone)]
pub(crate) struct ServerArg {
    /// taskhost server URL.
    #[arg(long, global = true, env = "TASKHOST_SERVER", default_value = "http://127.0.0.1:7700")]
    server: String,
}

#[derive(Debug, Args)]
pub(crate) struct SubmitArgs {
    /// Plugin name, or name@version.
    plugin: String,
    /// Input from FILE (`-` for stdin). Default: stdin when it is not a
    /// terminal, else empty.
    #[arg(long, short, value_name = "FILE")]
    input: Option<PathBuf>,
    /// Queue.
    #[arg(long, short)]
    queue: Option<String>,
    /// Priority 0-9 (higher runs first).
    #[arg(long, short)]
    priority: Option<i64>,
    /// Idempotency key.
    #[arg(long, short)]
    key: Option<String>,
    /// Most attempts.
    #[arg(long)]
    max_attempts: Option<i64>,
    /// Wait for the task to end, showing progress, and print its output.
    #[arg(long, short)]
    wait: bool,
    /// Submit every line of a JSONL file (each a task object; `plugin`
    /// defaults to PLUGIN), with a progress bar.
    #[arg(long, value_name = "FILE.jsonl", conflicts_with_all = ["input", "wait", "key"])]
    batch: Option<PathBuf>,
    #[command(flatten)]
    server: ServerArg,
}

#[derive(Debug, Args)]
pub(crate) struct IdArgs {
    /// Task id.
    id: String,
    #[command(flatten)]
    server: ServerArg,
}

#[derive(Debug, Args)]
pub(crate) struct TasksArgs {
    /// Only this state (pending, running, retrying, completed, failed, cancelled).
    #[arg(long)]
    state: Option<String>,
    /// Only this queue.
    #[arg(long)]
    queue: Option<String>,
    /// Only this plugin.
    #[arg(long)]
    plugin: Option<String>,
    /// Most tasks to show.
    #[arg(long, default_value_t = 50)]
    limit: usize,
    #[command(flatten)]
    server: ServerArg,
}

#[derive(Debug, Subcommand)]
pub(crate) enum PluginsCommand {
    /// Upload a component as a new version.
    Add {
        /// The .wasm file.
        file: PathBuf,
        /// Plugin name (default: the file name without extension).
        #[arg(long)]
        name: Option<String>,
        /// Version (default: the component's declared version, else the next number).
        #[arg(long)]
        version: Option<String>,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Show a plugin's versions, their state and task counts, and its manifest.
    Show {
        /// Plugin name.
        name: String,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Make VERSION what the plain name resolves to (rollback).
    Rollback {
        /// Plugin name.
        name: String,
        /// The version to make latest.
        version: String,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Delete a version no unfinished task uses.
    Delete {
        /// Plugin name.
        name: String,
        /// The version to delete.
        version: String,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Set a plugin's capability manifest from a TOML file (`-` clears it).
    Manifest {
        /// Plugin name.
        name: String,
        /// The manifest TOML file, or `-` to clear.
        file: PathBuf,
        #[command(flatten)]
        server: ServerArg,
    },
    /// List plugins and their versions.
    List {
        #[command(flatten)]
        server: ServerArg,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum QueuesCommand {
    /// Set a queue's concurrency limit and weight.
    Set {
        /// Queue name.
        name: String,
        /// Most tasks of this queue running at once.
        #[arg(long)]
        concurrency: Option<u32>,
        /// Share relative to other queues (default 1).
        #[arg(long)]
        weight: Option<u32>,
        #[command(flatten)]
        server: ServerArg,
    },
    /// List queues with their depth.
    List {
        #[command(flatten)]
        server: ServerArg,
    },
}

/// A failed call, already worded for the user.
pub(crate) struct Failure(pub(crate) u8, pub(crate) String);

type CallResult<T> = Result<T, Failure>;

pub(crate) struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    pub(crate) fn new(server: &ServerArg) -> Self {
        Self { base: server.server.trim_end_matches('/').to_owned(), http: reqwest::Client::new() }
    }

    async fn call(&self, request: reqwest::RequestBuilder) -> CallResult<Value> {
        let response = request.send().await.map_err(|e| {
            Failure(EXIT_USAGE, format!("cannot reach taskhost at {}: {e} (is `taskhost serve` running?)", self.base))
        })?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            Ok(body)
        } else {
            let code = body["error"]["code"].as_str().unwrap_or("error");
            let message = body["error"]["message"].as_str().map_or_else(|| status.to_string(), str::to_owned);
            Err(Failure(EXIT_TASK_FAILED, format!("{code}: {message}")))
        }
    }

    pub(crate) async fn get(&self, path: &str) -> CallResult<Value> {
        self.call(self.http.get(format!("{}{path}", self.base))).await
    }

    pub(crate) async fn delete(&self, path: &str) -> CallResult<Value> {
        self.call(self.http.delete(format!("{}{path}", self.base))).await
    }

    pub(crate) async fn post(&self, path: &str, body: &Value) -> CallResult<Value> {
        self.call(self.http.post(format!("{}{path}", self.base)).json(body)).await
    }
}

pub(crate) fn done(result: CallResult<ExitCode>) -> ExitCode {
    result.unwrap_or_else(|Failure(code, message)| fail(code, &message))
}

pub(crate) fn print_json(value: &Value) {
    println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
}

pub(crate) async fn submit(args: SubmitArgs) -> ExitCode {
    done(submit_inner(args).await)
}

async fn submit_inner(args: SubmitArgs) -> CallResult<ExitCode> {
    let client = Client::new(&args.server);
    if let Some(batch) = &args.batch {
        return submit_batch(&client, &args.plugin, batch).await;
    }
    let input = read_input(args.input.as_deref()).map_err(|m| Failure(EXIT_USAGE, m))?;
    let mut body = json!({"plugin": args.plugin, "input_base64": BASE64.encode(&input)});
    for (key, value) in [
        ("queue", args.queue.map(Value::from)),
        ("priority", args.priority.map(Value::from)),
        ("idempotency_key", args.key.map(Value::from)),
        ("max_attempts", args.max_attempts.map(Value::from)),
    ] {
        if let Some(value) = value {
            body[key] = value;
        }
    }
    let submitted = client.post("/v1/tasks", &body).await?;
    let id = submitted["id"].as_str().unwrap_or_default().to_owned();
    if !args.wait {
        println!("{id}");
        return Ok(ExitCode::SUCCESS);
    }
    let spinner = ProgressBar::new_spinner().with_message(format!("{id}: submitted"));
    if std::io::stderr().is_terminal() {
        spinner.enable_steady_tick(Duration::from_millis(100));
    }
    let record = loop {
        let record = client.get(&format!("/v1/tasks/{id}")).await?;
        let state = record["state"].as_str().unwrap_or("?").to_owned();
        spinner.set_message(format!("{id}: {state} (attempt {})", record["attempts"]));
        if matches!(state.as_str(), "completed" | "failed" | "cancelled") {
            break record;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    spinner.finish_and_clear();
    match record["state"].as_str() {
        Some("completed") => {
            let bytes = match (&record["output"], record["output_base64"].as_str()) {
                (_, Some(b64)) => BASE64.decode(b64).unwrap_or_default(),
                (Value::Null, None) => Vec::new(),
                (Value::String(s), None) => s.clone().into_bytes(),
                (other, None) => other.to_string().into_bytes(),
            };
            let _ = std::io::stdout().write_all(&bytes);
            Ok(ExitCode::SUCCESS)
        }
        Some(state) => {
            let error = &record["error"];
            let detail = match error["class"].as_str() {
                Some(class) => format!("{class}: {}", error["message"].as_str().unwrap_or("")),
                None => "cancelled".into(),
            };
            Err(Failure(EXIT_TASK_FAILED, format!("task {id} {state}: {detail}")))
        }
        None => Err(Failure(EXIT_TASK_FAILED, "the server sent a record without a state".into())),
    }
}

async fn submit_batch(client: &Client, plugin: &str, path: &std::path::Path) -> CallResult<ExitCode> {
    let file =
        std::fs::File::open(path).map_err(|e| Failure(EXIT_USAGE, format!("cannot read `{}`: {e}", path.display())))?;
    let mut tasks = Vec::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| Failure(EXIT_USAGE, format!("reading `{}`: {e}", path.display())))?;
        if line.trim().is_empty() {
            continue;
        }
        let mut task: Value = serde_json::from_str(&line)
            .map_err(|e| Failure(EXIT_USAGE, format!("{}:{}: not JSON: {e}", path.display(), n + 1)))?;
        if !task.is_object() {
            return Err(Failure(EXIT_USAGE, format!("{}:{}: expected a JSON object", path.display(), n + 1)));
        }
        if task.get("plugin").is_none() {
            task["plugin"] = json!(plugin);
        }
        tasks.push(task);
    }
    let bar = ProgressBar::new(tasks.len() as u64).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} submitted ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let (mut accepted, mut rejected) = (0usize, Vec::new());
    for chunk in tasks.chunks(1000) {
        let response = client.post("/v1/tasks:batch", &json!({"tasks": chunk})).await?;
        for result in response["results"].as_array().into_iter().flatten() {
            if result.get("id").is_some() {
                accepted += 1;
                println!("{}", result["id"].as_str().unwrap_or_default());
            } else {
                rejected.push(format!("{}: {}", result["error"]["code"], result["error"]["message"]));
            }
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    eprintln!("{accepted} accepted, {} rejected", rejected.len());
    for line in rejected.iter().take(10) {
        eprintln!("  rejected: {line}");
    }
    Ok(if rejected.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(EXIT_TASK_FAILED) })
}

pub(crate) async fn status(args: IdArgs) -> ExitCode {
    done(
        async {
            print_json(&Client::new(&args.server).get(&format!("/v1/tasks/{}", args.id)).await?);
            Ok(ExitCode::SUCCESS)
        }
        .await,
    )
}

pub(crate) async fn cancel(args: IdArgs) -> ExitCode {
    done(
        async {
            let record = Client::new(&args.server).post(&format!("/v1/tasks/{}/cancel", args.id), &json!({})).await?;
            println!("{} {}", record["id"].as_str().unwrap_or_default(), record["state"].as_str().unwrap_or_default());
            Ok(ExitCode::SUCCESS)
        }
        .await,
    )
}

pub(crate) async fn tasks(args: TasksArgs) -> ExitCode {
    done(
        async {
            let mut query = vec![format!("limit={}", args.limit)];
            for (key, value) in [("state", &args.state), ("queue", &args.queue), ("plugin", &args.plugin)] {
                if let Some(value) = value {
                    query.push(format!("{key}={value}"));
                }
            }
            let page = Client::new(&args.server).get(&format!("/v1/tasks?{}", query.join("&"))).await?;
            println!("{:<36}  {:<9}  {:<12}  {:<16}  {:>3}  {:>7}", "ID", "STATE", "QUEUE", "PLUGIN", "PRI", "ATTEMPT");
            for task in page["tasks"].as_array().into_iter().flatten() {
                println!(
                    "{:<36}  {:<9}  {:<12}  {:<16}  {:>3}  {:>7}",
                    task["id"].as_str().unwrap_or_default(),
                    task["state"].as_str().unwrap_or_default(),
                    task["queue"].as_str().unwrap_or_default(),
                    format!(
                        "{}@{}",
                        task["plugin"].as_str().unwrap_or_default(),
                        task["plugin_version"].as_str().unwrap_or_default()
                    ),
                    task["priority"],
                    format!("{}/{}", task["attempts"], task["max_attempts"]),
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        .await,
    )
}

pub(crate) async fn plugins(command: PluginsCommand) -> ExitCode {
    done(
        async {
            match command {
                PluginsCommand::Add { file, name, version, server } => {
                    let bytes = std::fs::read(&file)
                        .map_err(|e| Failure(EXIT_USAGE, format!("cannot read plugin `{}`: {e}", file.display())))?;
                    let name = name.unwrap_or_else(|| {
                        file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
                    });
                    let client = Client::new(&server);
                    let url = format!("{}/v1/plugins/{name}", client.base);
                    let query: Vec<(&str, String)> = version.map(|v| ("version", v)).into_iter().collect();
                    let added = client.call(client.http.post(url).query(&query).body(bytes)).await?;
                    println!(
                        "{}@{} sha256:{}{}",
                        added["name"].as_str().unwrap_or_default(),
                        added["version"].as_str().unwrap_or_default(),
                        added["digest"].as_str().unwrap_or_default(),
                        if added["created"] == json!(false) { " (unchanged: identical bytes)" } else { "" }
                    );
                }
                PluginsCommand::Show { name, server } => {
                    print_json(&Client::new(&server).get(&format!("/v1/plugins/{name}")).await?);
                }
                PluginsCommand::Rollback { name, version, server } => {
                    let client = Client::new(&server);
                    let url = format!("{}/v1/plugins/{name}/latest", client.base);
                    client.call(client.http.put(url).json(&json!({"version": version}))).await?;
                    println!("{name} now resolves to {name}@{version}");
                }
                PluginsCommand::Delete { name, version, server } => {
                    let client = Client::new(&server);
                    let url = format!("{}/v1/plugins/{name}/versions/{version}", client.base);
                    client.call(client.http.delete(url)).await?;
                    println!("deleted {name}@{version}");
                }
                PluginsCommand::Manifest { name, file, server } => {
                    let text = if file.as_os_str() == "-" {
                        String::new()
                    } else {
                        std::fs::read_to_string(&file).map_err(|e| {
                            Failure(EXIT_USAGE, format!("cannot read manifest `{}`: {e}", file.display()))
                        })?
                    };
                    let client = Client::new(&server);
                    let url = format!("{}/v1/plugins/{name}/manifest", client.base);
                    client.call(client.http.put(url).body(text)).await?;
                    println!("manifest of {name} updated");
                }
                PluginsCommand::List { server } => {
                    let list = Client::new(&server).get("/v1/plugins").await?;
                    println!("{:<24}  {:<8}  {:>8}  DIGEST", "NAME", "LATEST", "VERSIONS");
                    for plugin in list["plugins"].as_array().into_iter().flatten() {
                        let versions = plugin["versions"].as_array().map_or(0, Vec::len);
                        let digest = plugin["versions"]
                            .as_array()
                            .and_then(|v| v.last())
                            .map(|v| v["digest"].as_str().unwrap_or_default().to_owned())
                            .unwrap_or_default();
                        println!(
                            "{:<24}  {:<8}  {versions:>8}  {}",
                            plugin["name"].as_str().unwrap_or_default(),
                            plugin["latest"].as_str().unwrap_or_default(),
                            &digest[..digest.len().min(16)]
                        );
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        .await,
    )
}

pub(crate) async fn queues(command: QueuesCommand) -> ExitCode {
    done(
        async {
            match command {
                QueuesCommand::Set { name, concurrency, weight, server } => {
                    let client = Client::new(&server);
                    let body = json!({"concurrency": concurrency, "weight": weight});
                    let url = format!("{}/v1/queues/{name}", client.base);
                    print_json(&client.call(client.http.put(url).json(&body)).await?);
                }
                QueuesCommand::List { server } => print_json(&Client::new(&server).get("/v1/queues").await?),
            }
            Ok(ExitCode::SUCCESS)
        }
        .await,
    )
}

pub(crate) fn read_input(path: Option<&std::path::Path>) -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    match path {
        Some(p) if p.as_os_str() != "-" => {
            return std::fs::read(p).map_err(|e| format!("cannot read input `{}`: {e}", p.display()));
        }
        None if std::io::stdin().is_terminal() => {}
        _ => {
            std::io::stdin().read_to_end(&mut buf).map_err(|e| format!("cannot read input from stdin: {e}"))?;
        }
    }
    Ok(buf)
}
