//! Example: map-reduce word counting. Given a text, fans its lines out in
//! chunks (map), then joins the chunk counts into one table (reduce).

use serde::Deserialize;
use serde_json::json;
use std::collections::BTreeMap;
use taskhost_sdk::{Json, Result, flow};

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum Job {
    Text { text: String, chunk_lines: usize },
    Map { chunk: String },
    Reduce,
}

type Counts = BTreeMap<String, u64>;

#[taskhost_sdk::plugin]
fn map_reduce(Json(job): Json<Job>) -> Result<Json<Counts>> {
    let mut counts = Counts::new();
    match job {
        Job::Text { text, chunk_lines } => {
            let lines: Vec<&str> = text.lines().collect();
            let maps = lines
                .chunks(chunk_lines.max(1))
                .map(|c| flow::Child::new("map-reduce").json(&json!({"map": {"chunk": c.join("\n")}}))?.submit())
                .collect::<Result<Vec<_>>>()?;
            flow::join(&maps, flow::Child::new("map-reduce").input(r#""reduce""#))?;
        }
        Job::Map { chunk } => {
            for word in chunk.split(|c: char| !c.is_alphanumeric() && c != '\'').filter(|w| !w.is_empty()) {
                *counts.entry(word.to_lowercase()).or_default() += 1;
            }
        }
        Job::Reduce => {
            for part in flow::joined() {
                for (word, n) in part.json::<Counts>()? {
                    *counts.entry(word).or_default() += n;
                }
            }
        }
    }
    Ok(Json(counts))
}
