//! The client commands (`submit`, `status`, `cancel`, `tasks`, `plugins`,
//! `queues`): thin wrappers over the HTTP API, reading every answer into
//! its typed [`taskhost::wire`] struct.

use super::render::{self, JsonArg, Table, fields, or_dash};
use super::{EXIT_TASK_FAILED, EXIT_USAGE, fail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use taskhost::store::TaskState;
use taskhost::wire;

/// Why no token is sent.
#[derive(Debug)]
enum NoToken {
    /// None was given or found (said when the server answers 401).
    Missing(String),
    /// The local server runs as another user: nothing is sent to it.
    Impostor(String),
}

/// How to reach the server.
#[derive(Debug, Args, Clone)]
pub(crate) struct ServerArg {
    /// taskhost server URL.
    #[arg(long, global = true, env = "TASKHOST_SERVER", default_value = "http://127.0.0.1:7700")]
    server: String,
    /// API token (`th_...`). Default: $TASKHOST_TOKEN; for a server on
    /// this machine, the admin token `serve` wrote to DATA/admin.token.
    #[arg(long, global = true, env = "TASKHOST_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    token: Option<String>,
    /// Data directory of a server on this machine, whose admin.token is
    /// used when no token is given (default as for `serve`).
    #[arg(long, global = true, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Act in this tenant (an admin token in any; another token only in
    /// its own). Default: the token's tenant.
    #[arg(long, global = true, env = "TASKHOST_TENANT", value_name = "NAME")]
    tenant: Option<String>,
}

impl ServerArg {
    /// The token to send, or why there is none (said when the server
    /// answers 401).
    fn token(&self) -> Result<String, NoToken> {
        if let Some(token) = &self.token {
            return Ok(token.trim().to_owned());
        }
        let url = reqwest::Url::parse(&self.server).ok();
        let local = url.as_ref().and_then(|url| url.host_str()).is_some_and(taskhost::egress::is_loopback_host);
        if !local {
            return Err(NoToken::Missing(format!(
                "{} is not on this machine, so give --token or set $TASKHOST_TOKEN",
                self.server
            )));
        }
        // The admin token goes only to a server that runs as this user.
        let me = unsafe { libc::geteuid() };
        let port = url.as_ref().and_then(|url| url.port_or_known_default()).unwrap_or_default();
        if let Some(other) = super::local_server::listening_uids(port).into_iter().find(|uid| *uid != me) {
            return Err(NoToken::Impostor(format!(
                "the server listening on port {port} runs as uid {other}, not as you (uid {me}), so your admin token \
                 is not sent to it; give --token if you trust it"
            )));
        }
        let data = self.data.clone().unwrap_or_else(taskhost::engine::default_data_dir);
        let path = data.join(taskhost::auth::ADMIN_TOKEN_FILE);
        match taskhost::auth::read_token_file(&path) {
            Ok(token) if !token.is_empty() => Ok(token),
            Ok(_) => Err(NoToken::Missing(format!("{} is empty; give --token or set $TASKHOST_TOKEN", path.display()))),
            Err(e) => Err(NoToken::Missing(format!(
                "cannot read {} ({e}); give --token, set $TASKHOST_TOKEN, or --data DIR of the server",
                path.display()
            ))),
        }
    }
}

#[derive(Debug, Args)]
pub(crate) struct SubmitArgs {
    /// Plugin name, or name@version (or `--script FILE` instead).
    #[arg(required_unless_present_any = ["script", "batch"])]
    plugin: Option<String>,
    /// Run this script file (`.js`, `.mjs`, `.py`) as an ad-hoc script
    /// instead of a plugin, where the tenant allows ad-hoc scripts in the
    /// queue (its `script_queues` quota).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["plugin", "batch"])]
    script: Option<PathBuf>,
    /// The script's language when its file name does not say it.
    #[arg(long, value_name = "LANG", requires = "script")]
    lang: Option<taskhost::scripts::Language>,
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
    /// Wall-clock budget of each attempt, e.g. `30s` (default: the
    /// plugin's or the server's).
    #[arg(long, value_name = "DURATION", value_parser = taskhost::units::parse_duration)]
    timeout: Option<Duration>,
    /// Fuel (instructions, roughly) of each attempt.
    #[arg(long, value_name = "N")]
    fuel: Option<u64>,
    /// Memory limit of each attempt, e.g. `64MiB`.
    #[arg(long, value_name = "SIZE", value_parser = taskhost::units::parse_size)]
    memory: Option<u64>,
    /// Start it no sooner than this from now, e.g. `10m`.
    #[arg(long, value_name = "DURATION", value_parser = taskhost::units::parse_duration, conflicts_with = "run_at")]
    delay: Option<Duration>,
    /// Start it no sooner than this time (RFC 3339, e.g.
    /// `2026-12-24T18:00:00Z`).
    #[arg(long, value_name = "TIME")]
    run_at: Option<String>,
    /// POST the task's record to this URL when it ends (signed; see
    /// `GET /v1/callbacks/secret`).
    #[arg(long, value_name = "URL")]
    callback: Option<String>,
    /// Bytes of each attempt's log lines kept with the task, e.g. `256KiB`
    /// (default: the server's `--log-keep`, at most its `--log-keep-max`).
    #[arg(long, value_name = "SIZE", value_parser = taskhost::units::parse_size)]
    log_keep: Option<u64>,
    /// Wait for the task to end, showing progress, and print its output.
    #[arg(long, short)]
    wait: bool,
    /// Submit every line of a JSONL file (each a task object; `plugin`
    /// defaults to PLUGIN), with a progress bar.
    #[arg(
        long,
        value_name = "FILE.jsonl",
        conflicts_with_all = [
            "input", "wait", "key", "timeout", "fuel", "memory", "delay", "run_at", "callback"
        ]
    )]
    batch: Option<PathBuf>,
    #[command(flatten)]
    out: JsonArg,
    #[command(flatten)]
    server: ServerArg,
}

#[derive(Debug, Args)]
pub(crate) struct IdArgs {
    /// Task id.
    id: String,
    #[command(flatten)]
    out: JsonArg,
    #[command(flatten)]
    server: ServerArg,
}

#[derive(Debug, Args)]
pub(crate) struct RetryArgs {
    /// Task id.
    id: String,
    /// Run it on this version of its plugin instead of the one it pinned
    /// (say, a fixed one).
    #[arg(long)]
    version: Option<String>,
    #[command(flatten)]
    out: JsonArg,
    #[command(flatten)]
    server: ServerArg,
}

#[derive(Debug, Args)]
pub(crate) struct HistoryArgs {
    /// Task id.
    id: String,
    #[command(flatten)]
    out: JsonArg,
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
    /// Most tasks to show (1-1000).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=1000))]
    limit: u64,
    /// Oldest first (default: newest first).
    #[arg(long)]
    oldest: bool,
    /// Show the page after this task (the cursor the previous page printed).
    #[arg(long, value_name = "ID")]
    cursor: Option<String>,
    #[command(flatten)]
    out: JsonArg,
    #[command(flatten)]
    server: ServerArg,
}

#[derive(Debug, Subcommand)]
pub(crate) enum PluginsCommand {
    /// Upload a component as a new version.
    Add {
        /// The .wasm file, or a script (.js, .mjs, .py: its version is the
        /// source's hash).
        file: PathBuf,
        /// Register the file as a script in this language (`js`, `python`), whatever
        /// its extension.
        #[arg(long, value_name = "LANG")]
        lang: Option<taskhost::scripts::Language>,
        /// Plugin name (default: the file name without extension).
        #[arg(long)]
        name: Option<String>,
        /// Version (default: the component's declared version, else the next number).
        #[arg(long)]
        version: Option<String>,
        #[command(flatten)]
        out: JsonArg,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Show a plugin's versions, their state and task counts, and its manifest.
    Show {
        /// Plugin name.
        name: String,
        #[command(flatten)]
        out: JsonArg,
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
        out: JsonArg,
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
        out: JsonArg,
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
        out: JsonArg,
        #[command(flatten)]
        server: ServerArg,
    },
    /// List plugins and their versions.
    List {
        #[command(flatten)]
        out: JsonArg,
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
        /// How long its ended tasks (outside flows) are kept, e.g. `3d`,
        /// or `forever` (default: the server's `--retain-for`).
        #[arg(long, value_name = "DURATION")]
        retain_for: Option<String>,
        /// How many of its latest ended tasks (outside flows) are kept
        /// (default: the server's `--retain-count`).
        #[arg(long, value_name = "N")]
        retain_count: Option<u64>,
        #[command(flatten)]
        out: JsonArg,
        #[command(flatten)]
        server: ServerArg,
    },
    /// List queues with their settings and depth.
    List {
        #[command(flatten)]
        out: JsonArg,
        #[command(flatten)]
        server: ServerArg,
    },
}

/// The server's body limit for a request to `path`, as a 413's message
/// states it.
fn body_limit(path: &str) -> Option<String> {
    let bytes = body_limit_bytes(path)?;
    let size = taskhost::units::format_size(bytes as u64);
    Some(if path == "/v1/tasks" { format!("{size} of JSON, the input as base64 (4/3 of its size)") } else { size })
}

/// The server's body limit on `path`, in bytes.
fn body_limit_bytes(path: &str) -> Option<usize> {
    Some(match path {
        "/v1/tasks" | "/v1/flows" => taskhost::api::MAX_TASK_BODY,
        "/v1/tasks:batch" => taskhost::api::MAX_BATCH_BODY,
        p if p.starts_with("/v1/plugins/") => taskhost::registry::MAX_PLUGIN_BYTES,
        _ => return None,
    })
}

/// A failed call, already worded for the user.
pub(crate) struct Failure(pub(crate) u8, pub(crate) String);

type CallResult<T> = Result<T, Failure>;

pub(crate) struct Client {
    base: String,
    http: reqwest::Client,
    /// The token sent, or why none is.
    token: Result<String, NoToken>,
    /// The tenant to act in, when not the token's.
    tenant: Option<String>,
}

impl Client {
    pub(crate) fn new(server: &ServerArg) -> Self {
        taskhost::tls::install_crypto_provider();
        Self {
            base: server.server.trim_end_matches('/').to_owned(),
            http: reqwest::Client::new(),
            token: server.token(),
            tenant: server.tenant.clone(),
        }
    }

    /// Sends `request` and reads a success into `T`; an error answer
    /// becomes its `code: message`, and an answer that is not a `T` says
    /// what did not fit.
    async fn call<T: DeserializeOwned>(&self, request: reqwest::RequestBuilder) -> CallResult<T> {
        let (what, response) = self.send(request).await?;
        let body = response.bytes().await.unwrap_or_default();
        serde_json::from_slice(&body).map_err(|e| {
            let start = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            Failure(
                EXIT_USAGE,
                format!(
                    "taskhost at {} answered {what} with something unexpected ({e}); is it the same version as \
                     this client? The answer began: {start}",
                    self.base
                ),
            )
        })
    }

    /// Sends `request` with the token and tenant; returns what was asked
    /// (`GET /v1/...`) and a successful answer, whose body is not read
    /// yet. An error answer becomes its `code: message`.
    async fn send(&self, request: reqwest::RequestBuilder) -> CallResult<(String, reqwest::Response)> {
        let request = match &self.token {
            Ok(token) => request.bearer_auth(token),
            Err(NoToken::Impostor(why)) => return Err(Failure(EXIT_USAGE, why.clone())),
            Err(NoToken::Missing(_)) => request,
        };
        let request = match &self.tenant {
            Some(tenant) => request.header(taskhost::api::TENANT_HEADER, tenant),
            None => request,
        };
        let request = request.build().map_err(|e| Failure(EXIT_USAGE, format!("cannot build the request: {e}")))?;
        let path = request.url().path().to_owned();
        let what = format!("{} {path}", request.method());
        // A body over the server's limit is refused here: sent, the server
        // answers 413 and closes the connection, which the client may see
        // only as a reset halfway through sending.
        let size = request.body().and_then(|b| b.as_bytes()).map_or(0, <[u8]>::len);
        if let (Some(max), Some(limit)) = (body_limit_bytes(&path), body_limit(&path))
            && size > max
        {
            return Err(Failure(
                EXIT_TASK_FAILED,
                format!(
                    "error: payload_too_large: the request is {} (the server takes at most {limit} per request there)",
                    taskhost::units::format_size(size as u64)
                ),
            ));
        }
        let response = self.http.execute(request).await.map_err(|e| {
            if e.is_connect() {
                Failure(
                    EXIT_USAGE,
                    format!("cannot reach taskhost at {}: {e} (is `taskhost serve` running?)", self.base),
                )
            } else {
                Failure(EXIT_USAGE, format!("the connection to taskhost at {} broke during {what}: {e}", self.base))
            }
        })?;
        let status = response.status();
        if !status.is_success() {
            let body = response.bytes().await.unwrap_or_default();
            let mut message = match serde_json::from_slice::<wire::ErrorBody>(&body) {
                Ok(answer) => answer.error.to_string(),
                Err(_) => format!("error: {status}"),
            };
            if let (reqwest::StatusCode::UNAUTHORIZED, Err(NoToken::Missing(why))) = (status, &self.token) {
                message = format!("{message} (no token was sent: {why})");
            }
            if let (reqwest::StatusCode::PAYLOAD_TOO_LARGE, Some(limit)) = (status, body_limit(&path)) {
                message = format!("{message} (the server takes at most {limit} per request there)");
            }
            return Err(Failure(EXIT_TASK_FAILED, message));
        }
        Ok((what, response))
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `GET path`, read into `T`.
    pub(crate) async fn get_json<T: DeserializeOwned>(&self, path: &str) -> CallResult<T> {
        self.call(self.http.get(self.url(path))).await
    }

    /// `GET path?query` (the query encoded), read into `T`.
    pub(crate) async fn get_json_query<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> CallResult<T> {
        self.call(self.http.get(self.url(path)).query(query)).await
    }

    /// `GET path?query` (the query encoded), its answer's body left to
    /// read as it comes (a stream).
    pub(crate) async fn get_stream(&self, path: &str, query: &[(&str, String)]) -> CallResult<reqwest::Response> {
        Ok(self.send(self.http.get(self.url(path)).query(query)).await?.1)
    }

    /// `DELETE path`, read into `T`.
    pub(crate) async fn delete_json<T: DeserializeOwned>(&self, path: &str) -> CallResult<T> {
        self.call(self.http.delete(self.url(path))).await
    }

    /// `POST path` with a JSON body, read into `T`.
    pub(crate) async fn post_json<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> CallResult<T> {
        self.call(self.http.post(self.url(path)).json(body)).await
    }

    /// `PUT path` with a JSON body, read into `T`.
    pub(crate) async fn put_json<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> CallResult<T> {
        self.call(self.http.put(self.url(path)).json(body)).await
    }
}

pub(crate) fn done(result: CallResult<ExitCode>) -> ExitCode {
    result.unwrap_or_else(|Failure(code, message)| fail(code, &message))
}

/// Prints an answer as pretty JSON, keys sorted (as printing the untyped
/// JSON did).
/// Prints `value` as pretty JSON; a reader that closed the pipe early
/// (`| head`) ends the output quietly instead of a panic.
pub(crate) fn print_json(value: &impl Serialize) {
    let value = serde_json::to_value(value).unwrap_or_default();
    let text = serde_json::to_string_pretty(&value).unwrap_or_default();
    let _ = writeln!(std::io::stdout().lock(), "{text}");
}

pub(crate) async fn submit(args: SubmitArgs) -> ExitCode {
    done(submit_inner(args).await)
}

async fn submit_inner(args: SubmitArgs) -> CallResult<ExitCode> {
    let client = Client::new(&args.server);
    if let Some(batch) = &args.batch {
        return submit_batch(&client, args.plugin.as_deref(), batch, args.out).await;
    }
    let mut body = match (&args.plugin, &args.script) {
        (_, Some(path)) => wire::TaskSubmission::script(script_submission(path, args.lang)?),
        (Some(plugin), None) => wire::TaskSubmission::new(plugin.clone()),
        (None, None) => return Err(Failure(EXIT_USAGE, "give a PLUGIN or --script FILE".into())),
    };
    let input = read_input(args.input.as_deref()).map_err(|m| Failure(EXIT_USAGE, m))?;
    body.input_base64 = Some(BASE64.encode(&input));
    body.queue = args.queue;
    body.priority = args.priority;
    body.idempotency_key = args.key;
    body.max_attempts = args.max_attempts;
    let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    body.timeout_ms = args.timeout.map(millis);
    body.fuel = args.fuel;
    body.memory_bytes = args.memory;
    body.delay_ms = args.delay.map(millis);
    body.run_at = args.run_at;
    body.callback_url = args.callback;
    body.log_keep_bytes = args.log_keep;
    let submitted: wire::Submitted = client.post_json("/v1/tasks", &body).await?;
    let id = submitted.id;
    if !args.wait {
        args.out.print(&submitted, |s| format!("{}\n", s.id));
        return Ok(ExitCode::SUCCESS);
    }
    let spinner = ProgressBar::new_spinner().with_message(format!("{id}: submitted"));
    if std::io::stderr().is_terminal() {
        spinner.enable_steady_tick(Duration::from_millis(100));
    }
    // Subscribed before the record is read, so no transition after it
    // is missed; a host without room for one more subscriber is polled.
    let mut events = match client.get_stream("/v1/events", &[("flow", id.to_string())]).await {
        Ok(response) => Some(super::sse::SseReader::new(response)),
        Err(Failure(_, why)) => {
            tracing::debug!(%why, "waiting by polling: no event stream");
            None
        }
    };
    let record = loop {
        let record: wire::Task = client.get_json(&format!("/v1/tasks/{id}")).await?;
        spinner.set_message(format!("{id}: {} (attempt {})", record.state, record.attempts));
        if record.state.is_terminal() {
            break record;
        }
        match &mut events {
            Some(stream) => {
                if !next_move_of(stream, &id.to_string()).await? {
                    events = None;
                }
            }
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    spinner.finish_and_clear();
    if args.out.json {
        print_json(&record);
        let ok = record.state == TaskState::Completed;
        return Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(EXIT_TASK_FAILED) });
    }
    if record.state == TaskState::Completed {
        let _ = std::io::stdout().write_all(&printed_output(&record.output));
        return Ok(ExitCode::SUCCESS);
    }
    let detail = match &record.error {
        Some(error) => format!("{}: {}", error.class, error.message),
        None => "cancelled".into(),
    };
    Err(Failure(EXIT_TASK_FAILED, format!("task {id} {}: {detail}", record.state)))
}

/// Waits for the next event of task `id` (or a marker that events were
/// missed: the record is read again either way); false once the stream
/// ended (the caller polls instead).
pub(crate) async fn next_move_of(events: &mut super::sse::SseReader, id: &str) -> Result<bool, Failure> {
    loop {
        let Some(event) = events.next().await? else { return Ok(false) };
        if event.name == "missed" {
            return Ok(true);
        }
        let moved: Option<wire::TaskMoved> = serde_json::from_str(&event.data).ok();
        if event.name == "task" && moved.is_some_and(|m| m.id.to_string() == id) {
            return Ok(true);
        }
    }
}

/// The bytes `submit --wait` prints: raw bytes as they were, a JSON string
/// as its text, other JSON as its text, nothing for no output or `null`.
fn printed_output(output: &wire::Output) -> Vec<u8> {
    match (&output.json, &output.base64) {
        (_, Some(b64)) => BASE64.decode(b64).unwrap_or_default(),
        (None | Some(Value::Null), None) => Vec::new(),
        (Some(Value::String(s)), None) => s.clone().into_bytes(),
        (Some(other), None) => other.to_string().into_bytes(),
    }
}

/// An ad-hoc script read from `path`, its language from `lang` or the
/// file's extension.
fn script_submission(
    path: &std::path::Path,
    lang: Option<taskhost::scripts::Language>,
) -> CallResult<wire::ScriptSubmission> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let language = match lang {
        Some(lang) => lang,
        None => taskhost::scripts::Language::from_file_name(&name).ok_or_else(|| {
            Failure(
                EXIT_USAGE,
                format!("cannot tell the language of `{}`: name it .js or .py, or give --lang", path.display()),
            )
        })?,
    };
    let source =
        std::fs::read(path).map_err(|e| Failure(EXIT_USAGE, format!("cannot read `{}`: {e}", path.display())))?;
    let source = String::from_utf8(source)
        .map_err(|_| Failure(EXIT_USAGE, format!("`{}` is not UTF-8 text", path.display())))?;
    Ok(wire::ScriptSubmission::new(language.as_str(), source))
}

async fn submit_batch(
    client: &Client,
    plugin: Option<&str>,
    path: &std::path::Path,
    out: JsonArg,
) -> CallResult<ExitCode> {
    let file =
        std::fs::File::open(path).map_err(|e| Failure(EXIT_USAGE, format!("cannot read `{}`: {e}", path.display())))?;
    // Each task with its line in the file, to name it in the answers.
    let (mut tasks, mut lines) = (Vec::new(), Vec::new());
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
        if task.get("plugin").is_none()
            && task.get("script").is_none()
            && let Some(plugin) = plugin
        {
            task["plugin"] = json!(plugin);
        }
        tasks.push(task);
        lines.push(n + 1);
    }
    let bar = ProgressBar::new(tasks.len() as u64).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} submitted ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let (mut accepted, mut rejected) = (0usize, Vec::new());
    for (chunk, chunk_lines) in tasks.chunks(1000).zip(lines.chunks(1000)) {
        let body = wire::BatchSubmission::new(chunk.to_vec());
        let answer: wire::BatchAnswer = client.post_json("/v1/tasks:batch", &body).await?;
        if answer.results.len() != chunk.len() {
            bar.finish_and_clear();
            eprintln!("{accepted} accepted, {} rejected before the server's answer went wrong", rejected.len());
            return Err(Failure(
                EXIT_USAGE,
                format!(
                    "the server answered {} item(s) for a batch of {} tasks; which were accepted is unknown",
                    answer.results.len(),
                    chunk.len()
                ),
            ));
        }
        for (result, line) in answer.results.iter().zip(chunk_lines) {
            if out.json {
                // One line per item, in submission order, with the file's
                // line it came from.
                let mut item = serde_json::to_value(result).unwrap_or_default();
                if let Some(object) = item.as_object_mut() {
                    object.insert("line".into(), json!(line));
                }
                render::out(&format!("{item}\n"));
            }
            match result {
                wire::BatchItem::Submitted(submitted) => {
                    accepted += 1;
                    if !out.json {
                        render::out(&format!("{}\n", submitted.id));
                    }
                }
                wire::BatchItem::Refused(refused) => {
                    // Code and message quoted, as JSON strings.
                    let (code, message) = (json!(refused.error.code), json!(refused.error.message));
                    rejected.push(format!("{}:{line}: {code}: {message}", path.display()));
                }
                other => {
                    rejected.push(format!("{}:{line}: an answer this client does not know: {other:?}", path.display()))
                }
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
            let task: wire::Task = Client::new(&args.server).get_json(&format!("/v1/tasks/{}", args.id)).await?;
            args.out.print(&task, task_text);
            Ok(ExitCode::SUCCESS)
        }
        .await,
    )
}

pub(crate) async fn cancel(args: IdArgs) -> ExitCode {
    task_action(args, "cancel", &json!({})).await
}

pub(crate) async fn retry(args: RetryArgs) -> ExitCode {
    let body = wire::RetryRequest::new(args.version);
    task_action(IdArgs { id: args.id, out: args.out, server: args.server }, "retry", &body).await
}

/// `POST /v1/tasks/ID/ACTION`; prints the task's id and new state.
async fn task_action(args: IdArgs, action: &str, body: &impl serde::Serialize) -> ExitCode {
    done(
        async {
            let path = format!("/v1/tasks/{}/{action}", args.id);
            let record: wire::Task = Client::new(&args.server).post_json(&path, body).await?;
            args.out.print(&record, |r| format!("{} {}\n", r.id, r.state));
            Ok(ExitCode::SUCCESS)
        }
        .await,
    )
}

pub(crate) async fn history(args: HistoryArgs) -> ExitCode {
    done(
        async {
            let history: wire::History =
                Client::new(&args.server).get_json(&format!("/v1/tasks/{}/history", args.id)).await?;
            args.out.print(&history, history_text);
            Ok(ExitCode::SUCCESS)
        }
        .await,
    )
}

/// A task's transitions for people, oldest first.
fn history_text(history: &wire::History) -> String {
    let mut table = Table::new(&["AT", "MOVE", "ATTEMPT", "REASON"]).right(&[2]);
    for entry in &history.history {
        table.row(vec![
            entry.at.clone(),
            format!("{} → {}", entry.from.map_or("new", |s| s.as_str()), entry.to.as_str()),
            entry.attempt.to_string(),
            entry.reason.clone(),
        ]);
    }
    table.render("no transitions")
}

pub(crate) async fn tasks(args: TasksArgs) -> ExitCode {
    done(
        async {
            let order = if args.oldest { "oldest" } else { "newest" };
            let mut query =
                vec![("limit", args.limit.to_string()), ("order", order.to_owned()), ("count", "true".to_owned())];
            for (key, value) in
                [("state", args.state), ("queue", args.queue), ("plugin", args.plugin), ("cursor", args.cursor)]
            {
                if let Some(value) = value {
                    query.push((key, value));
                }
            }
            let page: wire::TaskPage = Client::new(&args.server).get_json_query("/v1/tasks", &query).await?;
            args.out.print(&page, tasks_text);
            Ok(ExitCode::SUCCESS)
        }
        .await,
    )
}

/// A page of tasks for people, then how many more there are and the
/// cursor that shows them.
fn tasks_text(page: &wire::TaskPage) -> String {
    let mut table = Table::new(&["ID", "STATE", "QUEUE", "PLUGIN", "PRI", "ATTEMPT", "SUBMITTED"]).right(&[4, 5]);
    for task in &page.tasks {
        table.row(vec![
            task.id.to_string(),
            task.state.to_string(),
            task.queue.clone(),
            format!("{}@{}", task.plugin, task.plugin_version),
            task.priority.to_string(),
            format!("{}/{}", task.attempts, task.max_attempts),
            task.created_at.clone(),
        ]);
    }
    let mut text = table.render("no tasks");
    if let (Some(more), Some(cursor)) = (page.more, page.next_cursor) {
        let more = if more >= taskhost::engine::MORE_COUNTED { format!("{more}+") } else { more.to_string() };
        text.push_str(&format!("{more} more: --cursor {cursor}\n"));
    }
    text
}

pub(crate) async fn plugins(command: PluginsCommand) -> ExitCode {
    done(
        async {
            match command {
                PluginsCommand::Add { file, name, version, lang, out, server } => {
                    let bytes = std::fs::read(&file)
                        .map_err(|e| Failure(EXIT_USAGE, format!("cannot read plugin `{}`: {e}", file.display())))?;
                    let name = name.unwrap_or_else(|| {
                        file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
                    });
                    let client = Client::new(&server);
                    let url = client.url(&format!("/v1/plugins/{name}"));
                    let lang = lang.or_else(|| taskhost::scripts::Language::from_file_name(&file.to_string_lossy()));
                    let mut query: Vec<(&str, String)> = version.map(|v| ("version", v)).into_iter().collect();
                    query.extend(lang.map(|l| ("lang", l.as_str().to_owned())));
                    let added: wire::PluginAdded = client.call(client.http.post(url).query(&query).body(bytes)).await?;
                    out.print(&added, |added| {
                        format!(
                            "{}@{} sha256:{}{}\n",
                            added.name,
                            added.version.version,
                            added.version.digest,
                            if added.created { "" } else { " (unchanged: identical bytes)" }
                        )
                    });
                }
                PluginsCommand::Show { name, out, server } => {
                    let plugin: wire::Plugin = Client::new(&server).get_json(&format!("/v1/plugins/{name}")).await?;
                    out.print(&plugin, plugin_text);
                }
                PluginsCommand::Rollback { name, version, out, server } => {
                    let path = format!("/v1/plugins/{name}/latest");
                    let latest: wire::PluginLatest =
                        Client::new(&server).put_json(&path, &wire::LatestChange::new(&version)).await?;
                    out.print(&latest, |l| format!("{0} now resolves to {0}@{1}\n", l.name, l.latest));
                }
                PluginsCommand::Delete { name, version, out, server } => {
                    let path = format!("/v1/plugins/{name}/versions/{version}");
                    let deleted: wire::VersionDeleted = Client::new(&server).delete_json(&path).await?;
                    out.print(&deleted, |d| format!("deleted {}@{}\n", d.name, d.deleted));
                }
                PluginsCommand::Manifest { name, file, out, server } => {
                    let text = if file.as_os_str() == "-" {
                        String::new()
                    } else {
                        std::fs::read_to_string(&file).map_err(|e| {
                            Failure(EXIT_USAGE, format!("cannot read manifest `{}`: {e}", file.display()))
                        })?
                    };
                    let client = Client::new(&server);
                    let url = client.url(&format!("/v1/plugins/{name}/manifest"));
                    let set: wire::ManifestSet = client.call(client.http.put(url).body(text)).await?;
                    out.print(&set, |m| format!("manifest of {} updated\n", m.name));
                }
                PluginsCommand::List { out, server } => {
                    let list: wire::PluginList = Client::new(&server).get_json("/v1/plugins").await?;
                    out.print(&list, |list| {
                        let mut table = Table::new(&["NAME", "LATEST", "VERSIONS", "DIGEST"]).right(&[2]);
                        for plugin in &list.plugins {
                            let digest = plugin.versions.last().map(|v| v.digest.as_str()).unwrap_or_default();
                            table.row(vec![
                                plugin.name.clone(),
                                plugin.latest.clone().unwrap_or_default(),
                                plugin.versions.len().to_string(),
                                render::short(digest, 16).to_owned(),
                            ]);
                        }
                        table.render("no plugins")
                    });
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
                QueuesCommand::Set { name, concurrency, weight, retain_for, retain_count, out, server } => {
                    let body = wire::QueueChange::new(concurrency, weight).retain(retain_for, retain_count);
                    let settings: wire::QueueSettings =
                        Client::new(&server).put_json(&format!("/v1/queues/{name}"), &body).await?;
                    out.print(&settings, |q| {
                        fields(&[
                            ("queue", q.name.clone()),
                            ("weight", q.weight.to_string()),
                            ("concurrency", or_dash(q.concurrency)),
                            ("retain for", q.retain_for.clone().unwrap_or_else(|| "the server's default".into())),
                            ("retain count", q.retain_count.map_or("the server's default".into(), |c| c.to_string())),
                        ])
                    });
                }
                QueuesCommand::List { out, server } => {
                    let queues: wire::QueueList = Client::new(&server).get_json("/v1/queues").await?;
                    out.print(&queues, queues_text);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        .await,
    )
}

/// A task's record for people: what it is, where it stands, what came of it.
fn task_text(task: &wire::Task) -> String {
    let time = |t: &Option<String>| t.clone().unwrap_or_default();
    let output = match task.output_bytes() {
        Some(bytes) => match std::str::from_utf8(&bytes) {
            Ok(text) if text.len() <= 200 && !text.trim_end_matches('\n').contains('\n') => {
                text.trim_end_matches('\n').to_owned()
            }
            _ => format!(
                "{} (`taskhost status {} --json` has it)",
                taskhost::units::format_size(bytes.len() as u64),
                task.id
            ),
        },
        None => task.output_len.map(taskhost::units::format_size).unwrap_or_default(),
    };
    let error = task.error.as_ref().map_or(String::new(), |e| {
        let retry = if e.retryable { " (retryable)" } else { "" };
        format!("{}: {}{retry}", e.class, e.message)
    });
    let callback = task.callback.as_ref().map_or(String::new(), |c| {
        let state = render::wire_name(&c.state);
        let error = c.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default();
        format!("{state} after {} attempt(s){error}", c.attempts)
    });
    let flow = if task.flow_id == task.id {
        String::new()
    } else {
        let step = task.step.as_deref().map(|s| format!(", step {s}")).unwrap_or_default();
        format!("{}{step}, iteration {}, depth {}", task.flow_id, task.iteration, task.depth)
    };
    let mut text = fields(&[
        ("id", task.id.to_string()),
        ("state", task.state.to_string()),
        ("plugin", format!("{}@{} (sha256:{})", task.plugin, task.plugin_version, render::short(&task.digest, 16))),
        ("queue", format!("{}, priority {}", task.queue, task.priority)),
        ("attempts", format!("{} of {}", task.attempts, task.max_attempts)),
        ("flow", flow),
        ("parent", task.parent_id.map(|p| p.to_string()).unwrap_or_default()),
        ("after", if task.after.is_empty() { String::new() } else { format!("{} task(s)", task.after.len()) }),
        ("key", task.idempotency_key.clone().unwrap_or_default()),
        ("created", task.created_at.clone()),
        ("started", time(&task.started_at)),
        ("finished", time(&task.finished_at)),
        ("next run", time(&task.next_run_at)),
        ("input", taskhost::units::format_size(task.input_len)),
        ("output", output),
        ("fuel used", task.fuel_used.map(|f| f.to_string()).unwrap_or_default()),
        ("error", error),
        ("callback url", task.callback_url.clone().unwrap_or_default()),
        ("callback", callback),
    ]);
    if let Some(error) = task.error.as_ref().filter(|e| !e.stderr_tail.is_empty()) {
        text.push_str("stderr (the failed attempt's last lines):\n");
        for line in &error.stderr_tail {
            text.push_str(&format!("  {}\n", render::printable(line)));
        }
    }
    text
}

/// A plugin for people: its name and latest, then a row per version.
fn plugin_text(plugin: &wire::Plugin) -> String {
    let mut text = fields(&[
        ("plugin", plugin.name.clone()),
        ("latest", plugin.latest.clone().unwrap_or_else(|| "the newest live version".into())),
        ("manifest", if plugin.manifest.is_some() { "set (`--json` shows it)".into() } else { "none".into() }),
        ("watch error", plugin.watch_error.clone().unwrap_or_default()),
    ]);
    let mut table = Table::new(&[
        "VERSION", "STATE", "LANG", "SIZE", "CREATED", "TASKS", "RUNS", "P50 MS", "MAX MS", "MAX MEM", "DIGEST",
    ])
    .right(&[3, 6, 7, 8, 9]);
    for v in &plugin.versions {
        let tasks: Vec<String> = v.tasks.iter().filter(|(_, n)| **n > 0).map(|(s, n)| format!("{s} {n}")).collect();
        let state = match &v.version.reason {
            Some(reason) => format!("{}: {reason}", render::wire_name(&v.version.state)),
            None => render::wire_name(&v.version.state),
        };
        table.row(vec![
            v.version.version.clone(),
            state,
            v.version.lang.clone().unwrap_or_else(|| "wasm".into()),
            taskhost::units::format_size(v.version.size),
            v.version.created_at.clone(),
            if tasks.is_empty() { "-".into() } else { tasks.join(", ") },
            v.runs.as_ref().map_or("-".into(), |r| r.runs.to_string()),
            v.runs.as_ref().map_or("-".into(), |r| format!("{:.2}", r.run_ms_p50)),
            v.runs.as_ref().map_or("-".into(), |r| format!("{:.2}", r.run_ms_max)),
            v.runs.as_ref().map_or("-".into(), |r| taskhost::units::format_size(r.memory_bytes_max)),
            render::short(&v.version.digest, 16).to_owned(),
        ]);
    }
    text.push('\n');
    text.push_str(&table.render("no versions"));
    text
}

/// The queues as a table.
fn queues_text(list: &wire::QueueList) -> String {
    let mut table =
        Table::new(&["QUEUE", "WEIGHT", "CONCURRENCY", "READY", "DELAYED", "RUNNING", "RETAIN", "RETAIN-COUNT"])
            .right(&[1, 2, 3, 4, 5]);
    for q in &list.queues {
        table.row(vec![
            q.name.clone(),
            q.weight.to_string(),
            or_dash(q.concurrency),
            q.ready.to_string(),
            q.delayed.to_string(),
            q.running.to_string(),
            q.retain_for.clone().unwrap_or_else(|| "default".into()),
            q.retain_count.map_or("default".to_owned(), |c| c.to_string()),
        ]);
    }
    table.render("no queues")
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
