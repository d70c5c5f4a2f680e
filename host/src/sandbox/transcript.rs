//! The transcript of one attempt: what the guest logged (WIT `log`) and
//! printed (stdout, stderr) as timed lines in the order they came, kept
//! within a byte cap and readable while the attempt runs.
//!
//! The cap is split in two: the first half keeps the attempt's first
//! lines, the second half its latest ones (a ring), and the lines dropped
//! between them are counted. So a flooding guest's last words (a panic,
//! a traceback) are kept with its first. The capture caps that trap a
//! guest (`max_log_bytes`) are separate and stay as they are.

use super::LogLevel;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// The longest line kept whole; a longer one (or a partial line that long)
/// is cut into lines of this size.
pub const MAX_LINE: usize = 4096;
/// What a line costs besides its text: the line itself in memory (its
/// stamp, number, source, the text's pointer) and its text's allocation.
const LINE_OVERHEAD: usize = std::mem::size_of::<LogLine>() + 16;
/// The cap when none is given: 64 KiB an attempt.
pub const DEFAULT_KEEP: u64 = 64 << 10;

/// Where a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// The WIT `log` interface.
    Log,
    /// The guest's stdout.
    Stdout,
    /// The guest's stderr.
    Stderr,
}

impl Stream {
    /// Its name, as the wire writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Log => "log",
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }
}

/// One line of an attempt's transcript.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// Its number in the attempt, from 1, with no gaps but where lines
    /// were dropped.
    pub seq: u64,
    /// When it was written (ms since the Unix epoch).
    pub at_ms: u64,
    /// Where it came from.
    pub stream: Stream,
    /// Its level, for a `log` record.
    pub level: Option<LogLevel>,
    /// The text, without its line end (invalid UTF-8 replaced).
    pub text: String,
}

impl LogLine {
    fn cost(&self) -> usize {
        self.text.len() + LINE_OVERHEAD
    }
}

/// Lines dropped from the middle of a transcript over its cap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dropped {
    /// How many.
    pub lines: u64,
    /// Their text's bytes.
    pub bytes: u64,
    /// The number of the last line kept before them.
    pub after_seq: u64,
}

/// An attempt's transcript as kept: its lines in order and what was
/// dropped between them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptLog {
    /// The lines kept, in order.
    pub lines: Vec<LogLine>,
    /// What was dropped, if anything.
    pub dropped: Option<Dropped>,
}

impl AttemptLog {
    /// Nothing was written.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty() && self.dropped.is_none()
    }
}

/// A live transcript; clones share it. See the module docs.
#[derive(Debug, Clone)]
pub struct Transcript {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    lines: Mutex<Lines>,
    /// The number of the newest line, and whether the attempt ended.
    changed: watch::Sender<(u64, bool)>,
    started: Instant,
    started_ms: u64,
}

#[derive(Debug, Default)]
struct Lines {
    half: usize,
    head: Vec<LogLine>,
    head_bytes: usize,
    tail: VecDeque<LogLine>,
    tail_bytes: usize,
    dropped: Option<Dropped>,
    last_seq: u64,
    /// The unfinished last line of stdout and stderr, with when it began.
    partial: [(Vec<u8>, u64); 2],
    ended: bool,
}

impl Default for Transcript {
    fn default() -> Self {
        Self::new(DEFAULT_KEEP)
    }
}

impl Transcript {
    /// An empty transcript keeping about `cap` bytes.
    pub fn new(cap: u64) -> Self {
        let half = usize::try_from(cap / 2).unwrap_or(usize::MAX);
        let started_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        Self {
            inner: Arc::new(Inner {
                lines: Mutex::new(Lines { half, ..Lines::default() }),
                changed: watch::Sender::new((0, false)),
                started: Instant::now(),
                started_ms,
            }),
        }
    }

    /// The most it can make the host hold from the attempt's start until
    /// its outcome is recorded: its lines (the cap, each counted with its
    /// overhead), the two unfinished lines (up to [`MAX_LINE`] each), and
    /// at the commit a copy of its lines and their encoding (at most the
    /// cap again each).
    pub fn most(&self) -> u64 {
        Self::most_for(self.lock().half as u64 * 2)
    }

    /// [`Transcript::most`] for a transcript keeping `cap` bytes (none for
    /// 0, which keeps no transcript).
    pub fn most_for(cap: u64) -> u64 {
        if cap == 0 { 0 } else { cap.saturating_mul(3).saturating_add(2 * MAX_LINE as u64) }
    }

    /// What it holds now, counted as [`Transcript::most`] counts it: its
    /// lines and unfinished lines, three times over for the commit.
    pub fn held(&self) -> u64 {
        let lines = self.lock();
        let kept = (lines.head_bytes + lines.tail_bytes) as u64;
        let partial = lines.partial.iter().map(|(p, _)| p.len() as u64).sum::<u64>();
        kept.saturating_mul(3).saturating_add(partial)
    }

    fn now_ms(&self) -> u64 {
        self.inner.started_ms + self.inner.started.elapsed().as_millis() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lines> {
        crate::sync::lock(&self.inner.lines)
    }

    /// Records a `log` message (one line per line of its text).
    pub fn log(&self, level: LogLevel, message: &str) {
        let at_ms = self.now_ms();
        let mut lines = self.lock();
        if lines.ended {
            return;
        }
        for text in split(message.as_bytes()) {
            lines.push(at_ms, Stream::Log, Some(level), text);
        }
        self.notify(&lines);
    }

    /// Records bytes written to stdout or stderr; complete lines become
    /// lines, the rest waits for its end.
    pub fn write(&self, stream: Stream, bytes: &[u8]) {
        let slot = match stream {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
            Stream::Log => return self.log(LogLevel::Info, &String::from_utf8_lossy(bytes)),
        };
        let at_ms = self.now_ms();
        let mut lines = self.lock();
        if lines.ended {
            return;
        }
        let before = lines.last_seq;
        let (mut pending, mut began) = std::mem::take(&mut lines.partial[slot]);
        if pending.is_empty() {
            began = at_ms;
        }
        pending.extend_from_slice(bytes);
        let mut rest = pending.as_slice();
        while let Some(end) = rest.iter().position(|b| *b == b'\n') {
            for text in split(&rest[..end]) {
                lines.push(began, stream, None, text);
            }
            began = at_ms;
            rest = &rest[end + 1..];
        }
        while rest.len() >= MAX_LINE {
            let (line, more) = rest.split_at(MAX_LINE);
            lines.push(began, stream, None, lossy(line));
            rest = more;
        }
        lines.partial[slot] = (rest.to_vec(), began);
        if lines.last_seq != before {
            self.notify(&lines);
        }
    }

    /// Ends the transcript: the unfinished lines become lines, later
    /// writes are ignored, and followers are told. Returns it as kept.
    pub fn finish(&self) -> AttemptLog {
        let mut lines = self.lock();
        if !lines.ended {
            for (slot, stream) in [(0, Stream::Stdout), (1, Stream::Stderr)] {
                let (pending, began) = std::mem::take(&mut lines.partial[slot]);
                if !pending.is_empty() {
                    lines.push(began, stream, None, lossy(&pending));
                }
            }
            lines.ended = true;
        }
        let log = lines.log();
        self.notify(&lines);
        log
    }

    /// The lines kept so far (not the unfinished ones).
    pub fn kept(&self) -> AttemptLog {
        self.lock().log()
    }

    /// The lines kept after line `seq`, copying only those.
    pub fn after(&self, seq: u64) -> Vec<LogLine> {
        let lines = self.lock();
        let head = lines.head.iter().filter(|l| l.seq > seq);
        head.chain(lines.tail.iter().filter(|l| l.seq > seq)).cloned().collect()
    }

    /// Whether [`Transcript::finish`] was called.
    pub fn is_ended(&self) -> bool {
        self.lock().ended
    }

    /// A receiver that sees the newest line's number and the end.
    pub fn subscribe(&self) -> watch::Receiver<(u64, bool)> {
        self.inner.changed.subscribe()
    }

    fn notify(&self, lines: &Lines) {
        self.inner.changed.send_replace((lines.last_seq, lines.ended));
    }
}

impl Lines {
    fn push(&mut self, at_ms: u64, stream: Stream, level: Option<LogLevel>, text: String) {
        self.last_seq += 1;
        let line = LogLine { seq: self.last_seq, at_ms, stream, level, text };
        let cost = line.cost();
        if self.tail.is_empty() && self.dropped.is_none() && self.head_bytes + cost <= self.half {
            self.head_bytes += cost;
            self.head.push(line);
            return;
        }
        self.tail_bytes += cost;
        self.tail.push_back(line);
        while self.tail_bytes > self.half
            && let Some(old) = self.tail.pop_front()
        {
            self.tail_bytes -= old.cost();
            let after_seq = self.head.last().map_or(0, |l| l.seq);
            let dropped = self.dropped.get_or_insert(Dropped { lines: 0, bytes: 0, after_seq });
            dropped.lines += 1;
            dropped.bytes += old.text.len() as u64;
        }
    }

    fn log(&self) -> AttemptLog {
        AttemptLog { lines: self.head.iter().chain(&self.tail).cloned().collect(), dropped: self.dropped }
    }
}

/// `bytes` as text lines: a trailing `\r` dropped, lines longer than
/// [`MAX_LINE`] cut. Lazy, so a message of a million empty lines never
/// holds a million strings at once.
fn split(bytes: &[u8]) -> impl Iterator<Item = String> + '_ {
    bytes.split(|b| *b == b'\n').flat_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let empty = line.is_empty().then(String::new);
        empty.into_iter().chain(line.chunks(MAX_LINE).map(lossy))
    })
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(log: &AttemptLog) -> Vec<(Stream, &str)> {
        log.lines.iter().map(|l| (l.stream, l.text.as_str())).collect()
    }

    #[test]
    fn lines_keep_their_order_and_partial_lines_wait_for_their_end() {
        let t = Transcript::new(DEFAULT_KEEP);
        t.write(Stream::Stdout, b"hel");
        t.log(LogLevel::Warn, "careful");
        t.write(Stream::Stdout, b"lo\r\nwor");
        t.write(Stream::Stderr, b"oops\n");
        assert_eq!(texts(&t.kept()), [(Stream::Log, "careful"), (Stream::Stdout, "hello"), (Stream::Stderr, "oops")]);
        let log = t.finish();
        assert_eq!(log.lines.last().map(|l| l.text.as_str()), Some("wor"));
        assert_eq!(log.lines.iter().map(|l| l.seq).collect::<Vec<_>>(), [1, 2, 3, 4]);
        assert_eq!(log.lines[0].level, Some(LogLevel::Warn));
        assert!(log.dropped.is_none());
        // Nothing is taken after the end.
        t.write(Stream::Stdout, b"late\n");
        assert_eq!(t.kept().lines.len(), 4);
    }

    #[test]
    fn what_a_transcript_holds_stays_within_what_it_reserves() {
        let t = Transcript::new(DEFAULT_KEEP);
        assert_eq!(t.most(), Transcript::most_for(DEFAULT_KEEP));
        assert_eq!(Transcript::most_for(0), 0);
        assert_eq!(t.held(), 0);
        // A flood of empty lines costs their overhead, and an unfinished
        // line its bytes.
        for _ in 0..100_000 {
            t.write(Stream::Stdout, b"\n");
        }
        t.write(Stream::Stderr, &[b'x'; MAX_LINE - 1]);
        let held = t.held();
        assert!(held > 3 * (DEFAULT_KEEP - 2 * LINE_OVERHEAD as u64), "{held}");
        assert!(held <= t.most(), "{held} > {}", t.most());
        // Finished, its unfinished line became a line, still within.
        t.finish();
        assert!(t.held() <= t.most(), "{} > {}", t.held(), t.most());
    }

    #[test]
    fn over_the_cap_the_first_and_last_lines_are_kept_and_the_middle_counted() {
        let t = Transcript::new(2 * (10 * (LINE_OVERHEAD as u64 + 4)));
        for i in 0..100 {
            t.write(Stream::Stderr, format!("{i:04}\n").as_bytes());
        }
        let log = t.finish();
        let kept: Vec<_> = log.lines.iter().map(|l| l.text.clone()).collect();
        let first: Vec<_> = (0..10).map(|i| format!("{i:04}")).collect();
        let last: Vec<_> = (90..100).map(|i| format!("{i:04}")).collect();
        assert_eq!(kept, [first, last].concat());
        assert_eq!(log.dropped, Some(Dropped { lines: 80, bytes: 320, after_seq: 10 }));
        assert_eq!(log.lines.iter().filter(|l| l.seq > 95).count(), 5);
        let after: Vec<u64> = t.after(9).iter().map(|l| l.seq).collect();
        assert_eq!(after, [10, 91, 92, 93, 94, 95, 96, 97, 98, 99, 100]);
    }

    #[test]
    fn long_lines_are_cut_and_invalid_utf8_is_replaced() {
        let t = Transcript::new(DEFAULT_KEEP);
        t.write(Stream::Stdout, &vec![b'x'; MAX_LINE * 2 + 1]);
        t.write(Stream::Stdout, b"\xff\n");
        let log = t.finish();
        let lens: Vec<_> = log.lines.iter().map(|l| l.text.len()).collect();
        assert_eq!(lens, [MAX_LINE, MAX_LINE, 1 + "\u{fffd}".len()]);
    }

    #[tokio::test]
    async fn followers_see_new_lines_and_the_end() {
        let t = Transcript::new(DEFAULT_KEEP);
        let mut rx = t.subscribe();
        t.log(LogLevel::Info, "one");
        rx.changed().await.unwrap();
        assert_eq!(*rx.borrow_and_update(), (1, false));
        t.finish();
        rx.changed().await.unwrap();
        assert_eq!(*rx.borrow_and_update(), (1, true));
    }
}
