//! The host's bounds against hostile clients and files, through the real
//! binary on loopback: idle, slow-header and slow-body connections are
//! closed and idle sockets never lock clients out; a compile past its
//! budget is stopped with its class and the next upload compiles; a full
//! upload queue is refused before the body is read, and queued uploads are
//! not held in memory; a FIFO, a directory and a huge sparse file in the
//! watched directory are skipped while the host serves and stops; callbacks
//! to a receiver that never answers stay within the in-flight bound.

use serde_json::{Value, json};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use taskhost_test_artifacts::UPPERCASE;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A `taskhost serve` on a free loopback port, killed when dropped.
struct Server {
    child: Child,
    addr: String,
    base: String,
    data: tempfile::TempDir,
    /// Sends the admin token.
    http: reqwest::Client,
    token: String,
}

impl Drop for Server {
    /// Never leaves a server running, even when an assertion failed.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Starts a server with `args`; its stderr goes to `DATA/stderr.log`.
    async fn start(args: &[&str]) -> Server {
        let data = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(data.path().join("stderr.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_taskhost"))
            .args(["serve", "--data", data.path().to_str().unwrap(), "--listen", &addr])
            .args(args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let base = format!("http://{addr}");
        let token = crate::admin_token(data.path()).await;
        let http = crate::authed(&token);
        let server = Server { child, addr, base, data, http, token };
        let deadline = Instant::now() + Duration::from_secs(30);
        while server.http.get(format!("{}/healthz", server.base)).send().await.is_err() {
            assert!(Instant::now() < deadline, "taskhost serve did not come up: {}", server.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.data.path().join("stderr.log")).unwrap_or_default()
    }

    /// `/healthz` answers 200 on a new connection.
    async fn healthy(&self) -> bool {
        taskhost::tls::install_crypto_provider();
        let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(10), client.get(format!("{}/healthz", self.base)).send());
        matches!(answer.await, Ok(Ok(response)) if response.status() == 200)
    }

    async fn upload(&self, name: &str, query: &str, bytes: Vec<u8>) -> (u16, Value) {
        let url = format!("{}/v1/plugins/{name}{query}", self.base);
        let response = self.http.post(url).body(bytes).send().await.unwrap();
        (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> Value {
        self.http.get(format!("{}{path}", self.base)).send().await.unwrap().json().await.unwrap()
    }

    /// The server's resident memory, in bytes.
    fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
    }
}

/// Whether the server closes `socket` within `within` (EOF or reset),
/// writing `drip` one byte at a time every 100 ms meanwhile.
async fn closed_by_server(mut socket: TcpStream, drip: &[u8], within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    let mut buffer = [0u8; 1024];
    let mut drip = drip.iter().cycle();
    loop {
        tokio::select! {
            read = socket.read(&mut buffer) => match read {
                Ok(0) | Err(_) => return true,
                Ok(_) => {} // an answer (e.g. 408): read on until it closes
            },
            () = tokio::time::sleep(Duration::from_millis(100)) => {
                if let Some(byte) = drip.next()
                    && socket.write_all(&[*byte]).await.is_err()
                {
                    return true;
                }
            }
            () = tokio::time::sleep_until(deadline) => return false,
        }
    }
}

/// A connection sending a stream (events) is not idle: new connections
/// past the cap close idle ones, never the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_connection_is_not_closed_to_make_room() {
    let server = Server::start(&["--max-connections", "4"]).await;
    let mut stream = server.http.get(format!("{}/v1/events", server.base)).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    let mut idle = Vec::new();
    for _ in 0..12 {
        idle.push(TcpStream::connect(&server.addr).await.unwrap());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(server.healthy().await, "a client gets in past the cap");
    // Still open: no end of stream within a while (an evicted one ends at once).
    let read = tokio::time::timeout(Duration::from_secs(2), stream.chunk()).await;
    assert!(read.is_err(), "the event stream was closed to make room: {read:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_slow_header_and_slow_body_connections_are_closed_and_never_lock_clients_out() {
    let server = Server::start(&["--max-connections", "16", "--header-timeout", "1s", "--body-timeout", "1s"]).await;
    // More idle sockets than the cap, and slow senders of a head and a body.
    let mut idle = Vec::new();
    for _ in 0..40 {
        idle.push(TcpStream::connect(&server.addr).await.unwrap());
    }
    let mut slow_heads = Vec::new();
    for _ in 0..5 {
        let mut socket = TcpStream::connect(&server.addr).await.unwrap();
        socket.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        slow_heads.push(socket);
    }
    let mut slow_body = TcpStream::connect(&server.addr).await.unwrap();
    let head = format!(
        "POST /v1/tasks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\n\
         Content-Length: 1000\r\n\r\n{{",
        server.token
    );
    slow_body.write_all(head.as_bytes()).await.unwrap();
    // A client still gets in while they are all open.
    for _ in 0..5 {
        assert!(server.healthy().await, "/healthz did not answer past the cap of idle sockets");
    }
    // Every one of them is closed, long before a client would give up.
    let within = Duration::from_secs(20);
    let mut closing = tokio::task::JoinSet::new();
    for socket in idle {
        closing.spawn(closed_by_server(socket, b"", within));
    }
    for socket in slow_heads {
        closing.spawn(closed_by_server(socket, b"X-Slow: drip\r\n", within));
    }
    let body_answer = tokio::spawn(async move {
        let mut answer = Vec::new();
        let closed = tokio::time::timeout(within, async {
            let mut buffer = [0u8; 4096];
            loop {
                tokio::select! {
                    read = slow_body.read(&mut buffer) => match read {
                        Ok(0) | Err(_) => return,
                        Ok(n) => answer.extend_from_slice(&buffer[..n]),
                    },
                    () = tokio::time::sleep(Duration::from_millis(100)) => {
                        if slow_body.write_all(b" ").await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        (closed.await.is_ok(), String::from_utf8_lossy(&answer).into_owned())
    });
    while let Some(closed) = closing.join_next().await {
        assert!(closed.unwrap(), "an idle or slow-header connection was never closed");
    }
    let (closed, answer) = body_answer.await.unwrap();
    assert!(closed, "a slow-body connection was never closed");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    assert!(server.healthy().await);
}

/// A component that takes minutes to compile: one function whose thousands
/// of locals all stay live around one long loop (a few hundred KB).
fn compile_bomb() -> Vec<u8> {
    use wasm_encoder::{
        BlockType, CodeSection, Component, Function, FunctionSection, Instruction, Module, ModuleSection, TypeSection,
        ValType,
    };
    let (steps, locals) = (40_000u32, 8_000u32);
    let mut types = TypeSection::new();
    types.ty().function([], [ValType::I32]);
    let mut functions = FunctionSection::new();
    functions.function(0);
    let mut body = Function::new([(locals, ValType::I32)]);
    body.instruction(&Instruction::Loop(BlockType::Empty));
    for i in 0..steps {
        let (a, b, c) = ((i * 7919) % locals, (i * 104_729 + 1) % locals, (i * 31 + 7) % locals);
        body.instruction(&Instruction::LocalGet(a))
            .instruction(&Instruction::LocalGet(b))
            .instruction(&Instruction::I32Add)
            .instruction(&Instruction::LocalSet(c));
    }
    body.instruction(&Instruction::LocalGet(0)).instruction(&Instruction::BrIf(0)).instruction(&Instruction::End);
    body.instruction(&Instruction::LocalGet(1)).instruction(&Instruction::End);
    let mut code = CodeSection::new();
    code.function(&body);
    let mut module = Module::new();
    module.section(&types).section(&functions).section(&code);
    let mut component = Component::new();
    component.section(&ModuleSection(&module));
    component.finish()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compile_past_its_budget_is_stopped_with_its_class_and_the_next_upload_compiles() {
    let server = Server::start(&["--compile-timeout", "5s"]).await;
    let (status, body) = server.upload("bomb", "", compile_bomb()).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "compile_timeout", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("compile budget of 5s"), "{message}");
    // The compile slot is free again: an ordinary plugin compiles and runs.
    let (status, body) = server.upload("uppercase", "", UPPERCASE.bytes()).await;
    assert_eq!(status, 201, "{body}");
    let http = &server.http;
    let submitted: Value = http
        .post(format!("{}/v1/tasks", server.base))
        .json(&json!({"plugin": "uppercase", "input_base64": "aGk="}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = submitted["id"].as_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let task = loop {
        let task = server.get(&format!("/v1/tasks/{id}")).await;
        if task["state"] == "completed" || task["state"] == "failed" {
            break task;
        }
        assert!(Instant::now() < deadline, "the task never ended: {task}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(task["output_base64"], "SEk=", "{task}"); // "HI"
    let metrics = http.get(format!("{}/metrics", server.base)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("taskhost_compile_timeouts_total 1"), "{metrics}");
    let bomb = server.get("/v1/plugins/bomb").await;
    assert_eq!(bomb["versions"][0]["state"], "failed", "{bomb}");
}

/// `bytes` with a trailing custom section of `padding` bytes, distinct by
/// `n` (custom sections are allowed anywhere in a component).
fn padded(bytes: &[u8], n: u8, padding: usize) -> Vec<u8> {
    let mut payload = vec![1u8, b'p']; // name: "p"
    payload.resize(padding, n);
    let mut out = bytes.to_vec();
    out.push(0); // custom section
    let mut size = payload.len() as u32;
    loop {
        let byte = (size & 0x7f) as u8;
        size >>= 7;
        if size == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
    out.extend_from_slice(&payload);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_upload_queue_is_refused_before_the_body_and_queued_uploads_are_not_in_memory() {
    // The bomb holds the one compile slot for the whole test.
    let server = Server::start(&["--compile-timeout", "120s"]).await;
    let (status, body) = server.upload("bomb", "?wait=false", compile_bomb()).await;
    assert_eq!(status, 202, "{body}");
    let before = server.rss();
    // Three large uploads fill the rest of the queue (four places).
    const LARGE: usize = 60 << 20;
    for n in 0..3u8 {
        let (status, body) =
            server.upload("large", &format!("?wait=false&version={n}"), padded(&UPPERCASE.bytes(), n, LARGE)).await;
        assert_eq!(status, 202, "{body}");
    }
    let grown = server.rss().saturating_sub(before);
    assert!(grown < LARGE as u64, "three queued uploads of 60 MiB grew the host by {} MiB", grown >> 20);
    // The fifth is refused as soon as its head arrives: its body is never read.
    let mut socket = TcpStream::connect(&server.addr).await.unwrap();
    let head = format!(
        "POST /v1/plugins/late HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: 50000000\r\n\r\n",
        server.token
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buffer = [0u8; 4096];
        while !String::from_utf8_lossy(&answer).contains("already compiling") {
            match socket.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => answer.extend_from_slice(&buffer[..n]),
            }
        }
    });
    read.await.expect("no answer before the body was sent");
    let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 503"), "{answer}");
    assert!(answer.contains("retry-after: 1"), "{answer}");
    assert!(answer.contains("already compiling"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watched_fifos_directories_and_huge_files_are_skipped_and_shutdown_completes() {
    let plugins = tempfile::tempdir().unwrap();
    let fifo = std::ffi::CString::new(plugins.path().join("pipe.wasm").to_str().unwrap()).unwrap();
    // SAFETY: a valid C string; creates a FIFO in our own directory.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    std::fs::File::create(plugins.path().join("huge.wasm")).unwrap().set_len(1 << 30).unwrap();
    std::fs::create_dir(plugins.path().join("folder.wasm")).unwrap();
    std::fs::write(plugins.path().join("shout.wasm"), UPPERCASE.bytes()).unwrap();
    let mut server = Server::start(&["--plugins", plugins.path().to_str().unwrap()]).await;
    let watch_error = |name: &'static str| {
        let server = &server;
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let plugin = server.get(&format!("/v1/plugins/{name}")).await;
                if let Some(error) = plugin["watch_error"].as_str() {
                    return error.to_owned();
                }
                assert!(Instant::now() < deadline, "{name}.wasm was never reported: {plugin}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert!(watch_error("pipe").await.contains("a FIFO, not a regular file"));
    assert!(watch_error("folder").await.contains("a directory, not a regular file"));
    assert!(watch_error("huge").await.contains("1073741824 bytes; the limit is"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.get("/v1/plugins/shout").await["latest"] != "1" {
        assert!(Instant::now() < deadline, "shout.wasm never went live");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(server.healthy().await);
    assert!(server.log().contains("skipping a file in the plugins directory"), "{}", server.log());
    // SAFETY: a plain kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(server.child.id() as libc::pid_t, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "SIGTERM did not stop the server: {}", server.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{}", server.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_to_a_receiver_that_never_answers_stay_within_the_in_flight_bound() {
    // The receiver accepts and never answers; it counts the connections
    // open at once (one ends when the host gives up on it).
    let receiver = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", receiver.local_addr().unwrap());
    let (open, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let accepting = {
        let (open, most) = (open.clone(), most.clone());
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = receiver.accept().await {
                let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                let open = open.clone();
                tokio::spawn(async move {
                    let mut sink = Vec::new();
                    let _ = socket.read_to_end(&mut sink).await;
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        })
    };
    let server = Server::start(&["--egress-allow", "127.0.0.1"]).await;
    assert_eq!(server.upload("uppercase", "", UPPERCASE.bytes()).await.0, 201);
    const TASKS: usize = 200;
    let tasks: Vec<Value> =
        (0..TASKS).map(|_| json!({"plugin": "uppercase", "input": "x", "callback_url": hook})).collect();
    let answer = server
        .http
        .post(format!("{}/v1/tasks:batch", server.base))
        .json(&json!({"tasks": tasks}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    // Every task ends, so every callback has started; the first attempts
    // hang until their 10 s timeout.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let page = server.get("/v1/tasks?state=completed&limit=1000").await;
        if page["tasks"].as_array().unwrap().len() == TASKS {
            break;
        }
        assert!(Instant::now() < deadline, "the tasks did not all complete");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while open.load(Ordering::SeqCst) < 64 {
        assert!(Instant::now() < deadline, "only {} deliveries connected", open.load(Ordering::SeqCst));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(server.healthy().await, "/healthz stalled while callbacks hung");
    // Well within the attempt timeout: no attempt has ended to free a turn.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let most = most.load(Ordering::SeqCst);
    assert!(most <= 64, "{most} callback connections were open at once; the bound is 64");
    accepting.abort();
}
