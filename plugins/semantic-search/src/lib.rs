//! Example flow: semantic search over a text corpus. The first task fans
//! the corpus out to `embed` tasks in chunks (their model calls are batched
//! together on the host), embeds the queries the same way, and joins; the
//! continuation ranks the corpus for each query by cosine similarity.

use serde::{Deserialize, Serialize};
use serde_json::json;
use taskhost_sdk::{Error, Json, Result, flow};

#[derive(Deserialize, Serialize)]
struct Search {
    corpus: Vec<String>,
    queries: Vec<String>,
    #[serde(default = "default_top")]
    top: usize,
    #[serde(default = "default_chunk")]
    chunk: usize,
    /// Set on the continuation: rank now.
    #[serde(default)]
    rank: bool,
}

fn default_top() -> usize {
    3
}
fn default_chunk() -> usize {
    8
}

#[derive(Deserialize)]
struct Embeddings {
    embeddings: Vec<Vec<f32>>,
}

#[derive(Serialize)]
struct Hit {
    score: f32,
    text: String,
}

#[taskhost_sdk::plugin]
fn semantic_search(Json(mut job): Json<Search>) -> Result<Json<serde_json::Value>> {
    if !job.rank {
        let embed = |texts: &[String]| flow::Child::new("embed").json(&json!({ "texts": texts }))?.submit();
        let mut parts = job.corpus.chunks(job.chunk.max(1)).map(embed).collect::<Result<Vec<_>>>()?;
        parts.push(embed(&job.queries)?);
        let chunks = parts.len() - 1;
        job.rank = true;
        flow::join(&parts, flow::Child::new("semantic-search").json(&job)?)?;
        return Ok(Json(json!({ "embedding": job.corpus.len() + job.queries.len(), "chunks": chunks })));
    }
    let mut vectors = Vec::new();
    for part in flow::joined() {
        vectors.push(part.json::<Embeddings>()?.embeddings);
    }
    let queries = vectors.pop().ok_or_else(|| Error::permanent("no query embeddings were joined"))?;
    let corpus: Vec<Vec<f32>> = vectors.into_iter().flatten().collect();
    if corpus.len() != job.corpus.len() || queries.len() != job.queries.len() {
        return Err(Error::permanent("the embed tasks returned a different number of vectors than texts"));
    }
    let answers: Vec<_> = job
        .queries
        .iter()
        .zip(&queries)
        .map(|(query, q)| {
            let mut hits: Vec<Hit> = job
                .corpus
                .iter()
                .zip(&corpus)
                .map(|(text, v)| Hit { score: q.iter().zip(v).map(|(a, b)| a * b).sum(), text: text.clone() })
                .collect();
            hits.sort_by(|a, b| b.score.total_cmp(&a.score));
            hits.truncate(job.top);
            json!({ "query": query, "nearest": hits })
        })
        .collect();
    Ok(Json(json!({ "answers": answers })))
}
