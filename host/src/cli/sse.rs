//! Reading a Server-Sent Events answer (`taskhost logs -f`, `taskhost
//! events`) one event at a time, within a size bound.

use super::EXIT_USAGE;
use super::client::Failure;

/// Most bytes of one event a client takes from the stream.
const MAX_EVENT: usize = 1 << 20;

/// One event: its name and its data (its lines joined).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct SseEvent {
    pub(crate) name: String,
    pub(crate) data: String,
}

/// See the module docs.
pub(crate) struct SseReader {
    response: reqwest::Response,
    buffer: Vec<u8>,
}

impl SseReader {
    pub(crate) fn new(response: reqwest::Response) -> Self {
        Self { response, buffer: Vec::new() }
    }

    /// The next event; `None` once the server closed the stream.
    /// Comments (keep-alives) are skipped.
    pub(crate) async fn next(&mut self) -> Result<Option<SseEvent>, Failure> {
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
                match parse(&block) {
                    Some(event) => return Ok(Some(event)),
                    None => continue,
                }
            }
            if self.buffer.len() > MAX_EVENT {
                return Err(Failure(EXIT_USAGE, format!("the server sent an event over {MAX_EVENT} bytes")));
            }
            let chunk = self
                .response
                .chunk()
                .await
                .map_err(|e| Failure(EXIT_USAGE, format!("the server's event stream broke off: {e}")))?;
            match chunk {
                Some(chunk) => self.buffer.extend_from_slice(&chunk),
                None => return Ok(None),
            }
        }
    }
}

/// The event of one block; `None` for one with no data (a comment).
fn parse(block: &[u8]) -> Option<SseEvent> {
    let text = String::from_utf8_lossy(block);
    let mut name = String::from("message");
    let mut data = Vec::new();
    for line in text.lines() {
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => name = value.to_owned(),
            "data" => data.push(value),
            _ => {}
        }
    }
    (!data.is_empty()).then(|| SseEvent { name, data: data.join("\n") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_become_events_and_comments_are_skipped() {
        let event = parse(b"event: attempt\nid: 1-2\ndata: {\"a\":\ndata: 1}\n\n").unwrap();
        assert_eq!(event, SseEvent { name: "attempt".into(), data: "{\"a\":\n1}".into() });
        assert_eq!(parse(b":\n\n"), None);
        assert_eq!(parse(b"data: x\n\n").unwrap().name, "message");
    }
}
