//! Text for people: the `--json` switch every client command takes, and the
//! tables and key/value blocks those commands print without it.

use serde::Serialize;
use std::io::Write;

/// `--json`: the server's answer, as the HTTP API sends it, instead of text.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub(crate) struct JsonArg {
    /// Print the server's answer as JSON (the HTTP API's body) instead of
    /// text for people.
    #[arg(long)]
    pub(crate) json: bool,
}

impl JsonArg {
    /// Prints `answer` as JSON when `--json` was given, else `text()`.
    pub(crate) fn print<T: Serialize>(self, answer: &T, text: impl FnOnce(&T) -> String) {
        if self.json {
            super::client::print_json(answer);
        } else {
            out(&text(answer));
        }
    }
}

/// `value` safe to print on a terminal: control characters (a newline, an
/// escape sequence a plugin put in its output or error) are shown escaped,
/// so what a task wrote can neither break the layout nor drive the terminal.
pub(crate) fn printable(value: &str) -> String {
    value.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
}

/// The first `n` characters of a digest (all of it when shorter).
pub(crate) fn short(digest: &str, n: usize) -> &str {
    digest.get(..n).unwrap_or(digest)
}

/// Writes `text` to stdout; a reader that closed the pipe early (`| head`)
/// ends the output quietly.
pub(crate) fn out(text: &str) {
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

/// A table: a header row, then one row per record, each column as wide as
/// its widest cell; numeric columns are right-aligned.
pub(crate) struct Table {
    headers: Vec<&'static str>,
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers (all left-aligned).
    pub(crate) fn new(headers: &[&'static str]) -> Self {
        Self { headers: headers.to_vec(), right: vec![false; headers.len()], rows: Vec::new() }
    }

    /// Right-aligns the columns at these positions.
    pub(crate) fn right(mut self, columns: &[usize]) -> Self {
        for &c in columns {
            if let Some(r) = self.right.get_mut(c) {
                *r = true;
            }
        }
        self
    }

    /// Adds a row (missing cells print empty).
    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells.iter().map(|c| printable(c)).collect());
    }

    /// The table as text; `empty` (e.g. `no queues`) when it has no rows.
    pub(crate) fn render(&self, empty: &str) -> String {
        if self.rows.is_empty() {
            return format!("{empty}\n");
        }
        let cell = |row: &Vec<String>, c: usize| row.get(c).map_or("", String::as_str).to_owned();
        let widths: Vec<usize> = (0..self.headers.len())
            .map(|c| {
                self.rows.iter().map(|r| cell(r, c).chars().count()).chain([self.headers[c].len()]).max().unwrap_or(0)
            })
            .collect();
        let line = |cells: Vec<String>| {
            let mut text = String::new();
            for (c, value) in cells.iter().enumerate() {
                if c > 0 {
                    text.push_str("  ");
                }
                let pad = " ".repeat(widths[c].saturating_sub(value.chars().count()));
                if self.right[c] {
                    text.push_str(&pad);
                    text.push_str(value);
                } else {
                    text.push_str(value);
                    text.push_str(&pad);
                }
            }
            format!("{}\n", text.trim_end())
        };
        let mut text = line(self.headers.iter().map(|h| (*h).to_owned()).collect());
        for row in &self.rows {
            text.push_str(&line((0..self.headers.len()).map(|c| cell(row, c)).collect()));
        }
        text
    }
}

/// `key   value` lines, keys padded to the longest; pairs whose value is
/// empty are left out.
pub(crate) fn fields(pairs: &[(&str, String)]) -> String {
    let shown: Vec<&(&str, String)> = pairs.iter().filter(|(_, v)| !v.is_empty()).collect();
    let width = shown.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    shown.iter().map(|(k, v)| format!("{k:<width$}  {}\n", printable(v))).collect()
}

/// The name a value serializes to (an enum's wire name, e.g. `live`).
pub(crate) fn wire_name<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

/// An optional value as text (`-` when absent).
pub(crate) fn or_dash<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_pads_each_column_to_its_widest_cell() {
        let mut table = Table::new(&["NAME", "N", "NOTE"]).right(&[1]);
        table.row(vec!["a".into(), "5".into(), "x".into()]);
        table.row(vec!["long-name".into(), "12345".into()]);
        assert_eq!(table.render("none"), "NAME           N  NOTE\na              5  x\nlong-name  12345\n");
        assert_eq!(Table::new(&["NAME"]).render("no things"), "no things\n");
    }

    #[test]
    fn fields_align_and_skip_empty_values() {
        let text = fields(&[("id", "7".into()), ("state", "done".into()), ("error", String::new())]);
        assert_eq!(text, "id     7\nstate  done\n");
    }

    #[test]
    fn what_a_task_wrote_cannot_drive_the_terminal() {
        assert_eq!(printable("ok\u{1b}]0;owned\u{7}\nnext"), "ok\\u{1b}]0;owned\\u{7}\\nnext");
        assert_eq!(fields(&[("output", "a\u{1b}[2Jb".into())]), "output  a\\u{1b}[2Jb\n");
        let mut table = Table::new(&["A"]);
        table.row(vec!["x\ry".into()]);
        assert_eq!(table.render(""), "A\nx\\ry\n");
        assert_eq!((short("abcdef", 4), short("ab", 4), short("é", 1)), ("abcd", "ab", "é"));
    }

    #[test]
    fn an_absent_value_reads_as_a_dash() {
        assert_eq!((or_dash(None::<u32>), or_dash(Some(4))), ("-".to_owned(), "4".to_owned()));
    }
}
