//! The BERT uncased WordPiece tokenizer all-MiniLM-L6-v2 was trained with
//! (`BertTokenizer`, `do_lower_case`): clean, lowercase, strip accents,
//! split on whitespace and punctuation, then greedy longest-match
//! WordPiece with `##` continuations, wrapped in `[CLS]` … `[SEP]`.

use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

include!(concat!(env!("OUT_DIR"), "/vocab.rs"));

const CLS: u32 = 101;
const SEP: u32 = 102;
const UNK: u32 = 100;
/// Words longer than this (in characters) become `[UNK]`, as in BERT.
const MAX_WORD_CHARS: usize = 100;

fn id(token: &str) -> Option<u32> {
    VOCAB.binary_search_by(|(t, _)| (*t).cmp(token)).ok().map(|i| VOCAB[i].1)
}

/// BERT's punctuation: ASCII symbols and Unicode punctuation blocks.
fn is_punctuation(c: char) -> bool {
    c.is_ascii_punctuation()
        || matches!(c as u32, 0x00A1..=0x00BF | 0x2010..=0x2027 | 0x2030..=0x205E | 0x3001..=0x3003 | 0x3008..=0x3011)
}

/// CJK ideographs are split into single characters.
fn is_cjk(c: char) -> bool {
    matches!(c as u32, 0x4E00..=0x9FFF | 0x3400..=0x4DBF | 0x20000..=0x2A6DF | 0xF900..=0xFAFF | 0x2F800..=0x2FA1F)
}

/// Splits `text` into words and punctuation, normalised as BERT does.
fn basic(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let flush = |word: &mut String, words: &mut Vec<String>| {
        if !word.is_empty() {
            words.push(std::mem::take(word));
        }
    };
    for c in text.to_lowercase().nfd().filter(|&c| !is_combining_mark(c)) {
        if c == '\0' || c == '\u{fffd}' || (c.is_control() && !c.is_whitespace()) {
            continue;
        }
        if c.is_whitespace() {
            flush(&mut word, &mut words);
        } else if is_punctuation(c) || is_cjk(c) {
            flush(&mut word, &mut words);
            words.push(c.to_string());
        } else {
            word.push(c);
        }
    }
    flush(&mut word, &mut words);
    words
}

/// WordPiece ids of one word: greedy longest match, `##` continuations.
fn wordpiece(word: &str, out: &mut Vec<u32>) {
    if word.chars().count() > MAX_WORD_CHARS {
        out.push(UNK);
        return;
    }
    let start_len = out.len();
    let mut start = 0;
    let mut piece = String::new();
    while start < word.len() {
        let mut end = word.len();
        let mut found = None;
        while end > start {
            piece.clear();
            if start > 0 {
                piece.push_str("##");
            }
            piece.push_str(&word[start..end]);
            if let Some(id) = id(&piece) {
                found = Some(id);
                break;
            }
            end = word[..end].char_indices().next_back().map_or(start, |(i, _)| i);
        }
        match found {
            Some(id) => out.push(id),
            None => {
                out.truncate(start_len);
                out.push(UNK);
                return;
            }
        }
        start = end;
    }
}

/// Token ids of `text`, `[CLS] … [SEP]`, at most `max_len` in all.
pub(crate) fn encode(text: &str, max_len: usize) -> Vec<u32> {
    let mut ids = vec![CLS];
    for word in basic(text) {
        wordpiece(&word, &mut ids);
    }
    ids.truncate(max_len.saturating_sub(1).max(1));
    ids.push(SEP);
    ids
}
