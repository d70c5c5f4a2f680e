//! The documentation: a short README, relative links in README.md and docs/
//! that lead to real files and headings, and an index that lists every page.

use std::collections::{HashMap, HashSet};
use std::path::{Component, Path, PathBuf};

/// The largest README.md allowed: what a newcomer needs first, no more.
const README_MAX_BYTES: u64 = 15 * 1024;

#[test]
fn the_readme_stays_short() {
    let size = std::fs::metadata(repo_root().join("README.md")).unwrap().len();
    assert!(
        size < README_MAX_BYTES,
        "README.md is {size} bytes, the limit is {README_MAX_BYTES}: move reference material to docs/"
    );
}

#[test]
fn every_relative_link_leads_to_a_file_and_heading() {
    let root = repo_root();
    let mut pages = vec![root.join("README.md")];
    pages.extend(docs_pages(&root));
    assert!(pages.len() > 5, "docs/ holds too few pages: {pages:?}");
    let mut checked = 0;
    let mut broken = Vec::new();
    for page in &pages {
        broken.extend(broken_links(&root, page, &read(page), &mut checked));
    }
    assert!(broken.is_empty(), "{} broken links:\n{}", broken.len(), broken.join("\n"));
    // Every page links somewhere; finding fewer links than pages means the
    // reader below has stopped seeing them.
    assert!(checked > pages.len(), "only {checked} relative links in {} pages", pages.len());
}

#[test]
fn the_docs_index_lists_every_page() {
    let root = repo_root();
    let index = root.join("docs").join("README.md");
    let linked: HashSet<PathBuf> = links(&read(&index))
        .into_iter()
        .filter_map(|(_, target)| resolve(&index, &target).map(|(file, _)| file))
        .collect();
    let unlisted: Vec<String> = docs_pages(&root)
        .into_iter()
        .filter(|page| *page != index && !linked.contains(page))
        .map(|p| shown(&root, &p))
        .collect();
    assert!(unlisted.is_empty(), "docs/README.md does not link to {unlisted:?}");
}

#[test]
fn the_link_checker_reads_markdown_as_github_does() {
    assert_eq!(slug("Plugins: versions, hot-loading, manifests"), "plugins-versions-hot-loading-manifests");
    assert_eq!(slug("Serving tasks: `taskhost serve`"), "serving-tasks-taskhost-serve");
    assert_eq!(slug("The plugin contract (`wit/`)"), "the-plugin-contract-wit");
    assert_eq!(slug("A 5-minute tour"), "a-5-minute-tour");
    assert_eq!(slug("See [the engine](engine.md) and snake_case"), "see-the-engine-and-snake_case");
    assert_eq!(slug("Ünïcode Straße"), "ünïcode-straße");

    let text = "# Title\n\n## Inference\n\n```sh\n# not a heading\n[fenced](missing.md)\n```\n\n## Inference\n\n\
                See [`x`](#inference-1), `[code](code.md)`, [web](https://example.com),\n\
                [gone](#nope), ``a `[b](c.md)` d``, [lost](lost.md#x) and [index](README.md).\n";
    let expected: HashSet<String> = ["title", "inference", "inference-1"].map(String::from).into();
    assert_eq!(anchors(text), expected);

    let root = repo_root();
    let page = root.join("docs").join("example.md");
    let mut checked = 0;
    let broken = broken_links(&root, &page, text, &mut checked);
    assert_eq!(checked, 4, "#inference-1, #nope, lost.md#x and README.md");
    assert_eq!(broken.len(), 2, "{broken:#?}");
    assert!(broken[0].starts_with("docs/example.md:13: #nope:"), "{}", broken[0]);
    assert!(broken[1].contains("lost.md#x: no such file"), "{}", broken[1]);

    let escape = broken_links(&root, &page, "[up](../../outside.md) [abs](/README.md)", &mut checked);
    assert_eq!(escape.len(), 2, "{escape:#?}");
}

/// The repository root: the host crate's parent.
fn repo_root() -> PathBuf {
    std::fs::canonicalize(Path::new(env!("CARGO_MANIFEST_DIR")).join("..")).unwrap()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// `path` relative to the repository root, for messages.
fn shown(root: &Path, path: &Path) -> String {
    path.strip_prefix(root).unwrap_or(path).display().to_string()
}

/// Every Markdown page in docs/, sorted.
fn docs_pages(root: &Path) -> Vec<PathBuf> {
    let mut pages: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/ is missing")
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    pages.sort();
    pages
}

/// One line per relative link of `page` (whose text is `text`) that leads
/// nowhere: a missing file, a missing heading, or a place outside the
/// repository. Counts the relative links it checks in `checked`.
fn broken_links(root: &Path, page: &Path, text: &str, checked: &mut usize) -> Vec<String> {
    let mut broken = Vec::new();
    for (line, target) in links(text) {
        if ["http://", "https://", "mailto:"].iter().any(|scheme| target.starts_with(scheme)) {
            continue;
        }
        *checked += 1;
        let mut fail = |why: String| broken.push(format!("{}:{line}: {target}: {why}", shown(root, page)));
        if target.starts_with('/') {
            fail("an absolute path; links must be relative to the page".into());
            continue;
        }
        let Some((file, anchor)) = resolve(page, &target) else {
            fail("not a link target".into());
            continue;
        };
        let same_page = file.as_path() == page;
        if !file.starts_with(root) {
            fail("leads outside the repository".into());
        } else if !same_page && !file.exists() {
            fail("no such file".into());
        } else if !anchor.is_empty() && file.extension().is_some_and(|ext| ext == "md") {
            let target_text = if same_page { text.to_owned() } else { read(&file) };
            let known = anchors(&target_text);
            if !known.contains(&anchor) {
                let mut known: Vec<_> = known.into_iter().collect();
                known.sort();
                fail(format!("no heading with this anchor in {}; its anchors: {known:?}", shown(root, &file)));
            }
        }
    }
    broken
}

/// The file a link `target` on `page` leads to (the page itself for a
/// bare `#anchor`), and the anchor, percent-decoded; `None` when the target
/// is not a file path at all.
fn resolve(page: &Path, target: &str) -> Option<(PathBuf, String)> {
    let (path, anchor) = target.split_once('#').unwrap_or((target, ""));
    let (path, anchor) = (percent_decode(path)?, percent_decode(anchor)?);
    let file = if path.is_empty() { page.to_path_buf() } else { normalize(&page.parent()?.join(path)) };
    Some((file, anchor))
}

/// `path` with `.` and `..` taken out, without touching the file system.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Every link target in `text`, with its line number: inline links and
/// images (`[text](target "title")`) and reference definitions
/// (`[name]: target`), outside fenced code blocks and code spans.
fn links(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (index, line) in prose(text).lines().enumerate() {
        let line_number = index + 1;
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = closing_paren(after) else { break };
            found.push((line_number, link_destination(&after[..end])));
            rest = &after[end + 1..];
        }
        let trimmed = line.trim_start();
        if line.len() - trimmed.len() <= 3
            && trimmed.starts_with('[')
            && let Some(close) = trimmed.find(']')
            && let Some(destination) = trimmed[close + 1..].strip_prefix(':')
            && !destination.trim().is_empty()
        {
            found.push((line_number, link_destination(destination)));
        }
    }
    found
}

/// Where the `)` that closes a link's parenthesis is in `text`, which starts
/// just after the `(`; parentheses inside the target nest.
fn closing_paren(text: &str) -> Option<usize> {
    let mut depth = 0usize;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' if depth == 0 => return Some(i),
            ')' => depth -= 1,
            _ => {}
        }
    }
    None
}

/// The destination of a link: `<...>` or the first word, without a title.
fn link_destination(inside: &str) -> String {
    let inside = inside.trim();
    match inside.strip_prefix('<').and_then(|rest| rest.split_once('>')) {
        Some((destination, _)) => destination.to_owned(),
        None => inside.split_whitespace().next().unwrap_or("").to_owned(),
    }
}

/// `text` with fenced code blocks and code spans blanked out; every line
/// stays where it was.
fn prose(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut fence: Option<(char, usize)> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        let marker = trimmed.chars().next().filter(|c| *c == '`' || *c == '~');
        let run = marker.map_or(0, |c| trimmed.chars().take_while(|&d| d == c).count());
        match fence {
            None if run >= 3 => fence = marker.map(|c| (c, run)),
            None => out.push_str(line),
            Some((c, len)) if marker == Some(c) && run >= len && trimmed[run..].trim().is_empty() => fence = None,
            Some(_) => {}
        }
        out.push('\n');
    }
    // A code span may run over lines, but never past a paragraph.
    out.split("\n\n").map(without_code_spans).collect::<Vec<_>>().join("\n\n")
}

/// `paragraph` with the inside of every code span replaced by spaces
/// (newlines kept). A span opens with a run of backticks and closes at the
/// next run of exactly as many; an unclosed run is literal text.
fn without_code_spans(paragraph: &str) -> String {
    let chars: Vec<char> = paragraph.chars().collect();
    let run_at = |i: usize| chars[i..].iter().take_while(|&&c| c == '`').count();
    let mut out = String::with_capacity(paragraph.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '`' {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        let open = run_at(i);
        let mut close = i + open;
        let end = loop {
            match chars[close..].iter().position(|&c| c == '`') {
                None => break None,
                Some(offset) => {
                    let at = close + offset;
                    let run = run_at(at);
                    if run == open {
                        break Some(at + run);
                    }
                    close = at + run;
                }
            }
        };
        match end {
            Some(end) => {
                out.extend(chars[i..end].iter().map(|&c| if c == '\n' { '\n' } else { ' ' }));
                i = end;
            }
            None => {
                out.extend(&chars[i..i + open]);
                i += open;
            }
        }
    }
    out
}

/// The anchors GitHub gives the headings of `text`: each heading's slug,
/// and `slug-1`, `slug-2`… for the ones that repeat an earlier slug.
fn anchors(text: &str) -> HashSet<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut anchors = HashSet::new();
    for line in prose_lines_raw(text) {
        let Some(title) = atx_heading(line) else { continue };
        let base = slug(title);
        let count = seen.entry(base.clone()).or_insert(0);
        anchors.insert(if *count == 0 { base } else { format!("{base}-{count}") });
        *count += 1;
    }
    anchors
}

/// The lines of `text` outside fenced code blocks, code spans left as they
/// are (a heading's slug is made from its text, code included).
fn prose_lines_raw(text: &str) -> Vec<&str> {
    let blanked = prose(text);
    // `prose` keeps line positions, so a line it emptied was fenced (or was empty).
    text.lines().zip(blanked.lines()).filter(|(_, kept)| !kept.is_empty()).map(|(line, _)| line).collect()
}

/// The text of an ATX heading (`## Title`, `## Title ##`), if `line` is one.
fn atx_heading(line: &str) -> Option<&str> {
    let trimmed = line.trim_start_matches(' ');
    if line.len() - trimmed.len() > 3 {
        return None;
    }
    let level = trimmed.chars().take_while(|&c| c == '#').count();
    let title = &trimmed[level..];
    if !(1..=6).contains(&level) || !(title.is_empty() || title.starts_with([' ', '\t'])) {
        return None;
    }
    let title = title.trim();
    let without_closing = title.trim_end_matches('#');
    Some(if without_closing.is_empty() || without_closing.ends_with([' ', '\t']) {
        without_closing.trim()
    } else {
        title
    })
}

/// GitHub's anchor for a heading: its text (a link counts as its text),
/// lowercased, without punctuation other than `-` and `_`, spaces made `-`.
fn slug(heading: &str) -> String {
    let mut text = String::new();
    let mut rest = heading;
    while let Some(at) = rest.find("](") {
        text.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        rest = closing_paren(after).map_or("", |end| &after[end + 1..]);
    }
    text.push_str(rest);
    text.trim()
        .to_lowercase()
        .chars()
        .filter(|&c| c.is_alphanumeric() || matches!(c, '-' | '_' | ' '))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}
