//! Example: typed JSON in and out. Counts the words of a text and reports
//! the most frequent ones.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use taskhost_sdk::{Error, Json, Result};

#[derive(Deserialize)]
struct Request {
    text: String,
    #[serde(default = "default_top")]
    top: usize,
}

fn default_top() -> usize {
    5
}

#[derive(Serialize)]
struct Counts {
    words: usize,
    unique: usize,
    top: Vec<(String, usize)>,
}

#[taskhost_sdk::plugin]
fn word_count(Json(req): Json<Request>) -> Result<Json<Counts>> {
    if req.top > 1000 {
        return Err(Error::permanent(format!("`top` is {}; at most 1000 allowed", req.top)));
    }
    let mut counts: HashMap<String, usize> = HashMap::new();
    let words = req.text.split(|c: char| !c.is_alphanumeric() && c != '\'').filter(|w| !w.is_empty());
    let total = words.map(|w| *counts.entry(w.to_lowercase()).or_default() += 1).count();
    let mut top: Vec<(String, usize)> = counts.iter().map(|(w, &n)| (w.clone(), n)).collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    top.truncate(req.top);
    Ok(Json(Counts { words: total, unique: counts.len(), top }))
}
