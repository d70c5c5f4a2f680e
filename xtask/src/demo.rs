//! The JSON and HTTP parts of `./dev.sh demo`: the inputs it submits, the
//! summaries it prints from the CLI's JSON, and the /metrics lines it shows.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};

/// Prints the demo input `name` (a JSON document, or JSON lines for
/// `workload`) to stdout.
pub fn input(root: &Path, name: &str) -> Result<(), String> {
    let lines: Vec<Value> = match name {
        // word-count over the Apache-2.0 LICENSE text.
        "word-count" => vec![json!({"text": read_text(root, "LICENSE")?, "top": 5})],
        // `submit --batch`: 375 tasks over 3 queues, 5 of them retried until they fail.
        "workload" => {
            let license = read_text(root, "LICENSE")?;
            let bulk =
                (0..300).map(|i| json!({"plugin": "uppercase", "queue": "bulk", "input": format!("bulk item {i}")}));
            let interactive = (0..50).map(|i| {
                json!({"plugin": "hello-task", "queue": "interactive", "priority": 9,
                       "input_base64": BASE64.encode(format!("user{i}"))})
            });
            let reports = (0..20)
                .map(|_| json!({"plugin": "word-count", "queue": "reports", "input": {"text": license, "top": 3}}));
            let flaky = (0..5).map(|_| {
                json!({"plugin": "flaky", "queue": "bulk", "max_attempts": 3,
                       "input_base64": BASE64.encode("retryable:upstream busy")})
            });
            bulk.chain(interactive).chain(reports).chain(flaky).collect()
        }
        // map-reduce over README.md, 150 lines a chunk.
        "map-reduce" => vec![json!({"text": {"text": read_text(root, "README.md")?, "chunk_lines": 150}})],
        "pipeline" => vec![json!({"stage": "a", "round": 0, "rounds": 2, "text": "  Flows Are  Durable Tasks "})],
        // A declared flow: series + parallel, repeated twice.
        "flow-spec" => vec![json!({
            "name": "shout twice", "input": "hello", "repeat": {"times": 2},
            "steps": [
                {"id": "first", "plugin": "uppercase"},
                {"parallel": [{"id": "left", "plugin": "uppercase"}, {"id": "right", "plugin": "hello-task"}]},
                {"id": "gather", "plugin": "uppercase"},
            ],
        })],
        // README paragraphs (prose only) as the corpus, and three questions.
        "semantic-search" => {
            let readme = read_text(root, "README.md")?;
            let corpus: Vec<String> = readme
                .split("\n\n")
                .map(|p| p.split_whitespace().collect::<Vec<_>>().join(" "))
                .filter(|p| p.chars().count() > 80 && !["```", "|", "#", "-"].iter().any(|s| p.starts_with(s)))
                .take(120)
                .collect();
            let queries = [
                "What happens to my tasks if the server crashes?",
                "How do I load a new version of a plugin without a restart?",
                "How is time shared fairly between queues?",
            ];
            vec![json!({"corpus": corpus, "queries": queries, "top": 1, "chunk": 4})]
        }
        _ => {
            return Err(format!(
                "unknown demo input `{name}` (word-count, workload, map-reduce, pipeline, flow-spec, semantic-search)"
            ));
        }
    };
    let mut out = std::io::stdout().lock();
    for line in lines {
        writeln!(out, "{line}").map_err(|e| format!("writing stdout: {e}"))?;
    }
    Ok(())
}

/// Success if the `taskhost plugins show` JSON on stdin lists `version` as live.
pub fn plugin_live(version: &str) -> ExitCode {
    let live = read_stdin_json().is_ok_and(|plugin| {
        plugin["versions"]
            .as_array()
            .is_some_and(|versions| versions.iter().any(|v| v["version"] == version && v["state"] == "live"))
    });
    if live { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// `minilm ready on cpu inputs ['input_ids', 'attention_mask', 'token_type_ids']`
/// from the `taskhost models add` JSON on stdin.
pub fn model_summary() -> Result<(), String> {
    let model = read_stdin_json()?;
    let inputs: Vec<String> = field(&model, &["inputs"])?
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| format!("'{}'", text(&i["name"])))
        .collect();
    println!(
        "{} {} on {} inputs [{}]",
        text(field(&model, &["name"])?),
        text(field(&model, &["state"])?),
        text(field(&model, &["running_on"])?),
        inputs.join(", ")
    );
    Ok(())
}

/// The state of a semantic-search flow (`taskhost flow ID --json` on stdin)
/// and, for each query, the start of its nearest paragraph and its score.
pub fn search_answers() -> Result<(), String> {
    let flow = read_stdin_json()?;
    println!(
        "flow {} with {} tasks in {} ms",
        text(field(&flow, &["state"])?),
        text(field(&flow, &["tasks", "total"])?),
        text(field(&flow, &["duration_ms"])?)
    );
    for answer in field(&flow, &["output", "answers"])?.as_array().into_iter().flatten() {
        let nearest = &answer["nearest"][0];
        let passage: String = text(field(nearest, &["text"])?).chars().take(150).collect();
        let score = field(nearest, &["score"])?.as_f64().ok_or("a score is not a number")?;
        println!("Q: {}", text(field(answer, &["query"])?));
        println!("   -> {passage} ({score:.2})");
    }
    Ok(())
}

/// Prints the lines of `server`/metrics that start with `--prefix` (if
/// given) and contain any of the `--contains` strings (if any are given).
pub fn metrics(server: &str, filters: &[&str]) -> Result<(), String> {
    let (mut prefix, mut contains) = ("", Vec::new());
    let mut filters = filters.iter();
    while let Some(flag) = filters.next() {
        let value = filters.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match *flag {
            "--prefix" => prefix = value,
            "--contains" => contains.push(*value),
            _ => return Err(format!("unknown option `{flag}` (--prefix P, --contains S)")),
        }
    }
    let body = http_get(&format!("{}/metrics", server.trim_end_matches('/')))?;
    for line in body.lines() {
        if line.starts_with(prefix) && (contains.is_empty() || contains.iter().any(|s| line.contains(s))) {
            println!("{line}");
        }
    }
    Ok(())
}

/// A plain HTTP/1.1 GET (no TLS: the demo's server is on loopback); the body
/// of a 200 response.
fn http_get(url: &str) -> Result<String, String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
    let (authority, path) = rest.find('/').map_or((rest, "/"), |i| rest.split_at(i));
    let address = if authority.rsplit(']').next().is_some_and(|a| a.contains(':')) {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let fail = |e: std::io::Error| format!("GET {url}: {e}");
    let mut stream = TcpStream::connect(&address).map_err(fail)?;
    stream.set_read_timeout(Some(Duration::from_secs(30))).map_err(fail)?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n").map_err(fail)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).map_err(fail)?;

    let split = response.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| format!("GET {url}: no headers"))?;
    let head = String::from_utf8_lossy(&response[..split]);
    let body = &response[split + 4..];
    let mut head_lines = head.lines();
    let status = head_lines.next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(format!("GET {url}: {status}"));
    }
    let header = |name: &str| {
        head_lines.clone().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim().eq_ignore_ascii_case(name).then(|| value.trim().to_owned())
        })
    };
    let body = if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        dechunk(body).ok_or_else(|| format!("GET {url}: malformed chunked body"))?
    } else if let Some(length) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.get(..length).ok_or_else(|| format!("GET {url}: body shorter than its content-length"))?.to_vec()
    } else {
        body.to_vec()
    };
    String::from_utf8(body).map_err(|e| format!("GET {url}: body is not UTF-8: {e}"))
}

/// Decodes a `Transfer-Encoding: chunked` body (trailers ignored).
fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&body[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(body.get(..size)?);
        body = body.get(size + 2..)?;
    }
}

fn read_text(root: &Path, name: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(root.join(name)).map_err(|e| format!("reading {name}: {e}"))?;
    Ok(text.replace("\r\n", "\n"))
}

fn read_stdin_json() -> Result<Value, String> {
    let mut text = String::new();
    std::io::stdin().read_to_string(&mut text).map_err(|e| format!("reading stdin: {e}"))?;
    serde_json::from_str(&text).map_err(|e| format!("stdin is not JSON: {e}"))
}

/// `value[path[0]][path[1]]...`, or an error naming the missing field.
fn field<'a>(value: &'a Value, path: &[&str]) -> Result<&'a Value, String> {
    path.iter().try_fold(value, |v, key| v.get(key)).ok_or_else(|| format!("the JSON has no `{}`", path.join(".")))
}

/// A JSON scalar as text: strings without quotes, null as `None` (as the
/// Python this replaces printed it).
fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "None".into(),
        Value::Bool(b) => if *b { "True" } else { "False" }.into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dechunks() {
        assert_eq!(dechunk(b"4\r\nabcd\r\n3;x=y\r\nefg\r\n0\r\n\r\n").as_deref(), Some(&b"abcdefg"[..]));
        assert_eq!(dechunk(b"4\r\nab"), None);
    }

    #[test]
    fn prints_scalars_like_python() {
        assert_eq!(text(&json!("cpu")), "cpu");
        assert_eq!(text(&json!(null)), "None");
        assert_eq!(text(&json!(42)), "42");
    }
}
