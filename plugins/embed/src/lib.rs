//! Example: sentence embeddings with all-MiniLM-L6-v2. The plugin
//! tokenizes (WordPiece, in the sandbox); the host runs the model, batching
//! this task's call with other tasks'; the plugin mean-pools the token
//! vectors and normalises them.
//!
//! Input `{"texts": ["...", ...]}` (optional `"model"`, default `minilm`);
//! output `{"dims": 384, "embeddings": [[...], ...]}`, unit vectors, so a
//! dot product is the cosine similarity.

mod tokenizer;

use serde::{Deserialize, Serialize};
use taskhost_sdk::inference::{self, Tensor};
use taskhost_sdk::{Error, Json, Result};

/// Longest input in tokens (the model was trained on 256).
const MAX_TOKENS: usize = 256;

#[derive(Deserialize)]
struct Request {
    texts: Vec<String>,
    model: Option<String>,
}

#[derive(Serialize)]
struct Embeddings {
    dims: usize,
    embeddings: Vec<Vec<f32>>,
}

#[taskhost_sdk::plugin]
fn embed(Json(req): Json<Request>) -> Result<Json<Embeddings>> {
    let model = req.model.as_deref().unwrap_or("minilm");
    let ids: Vec<Vec<u32>> = req.texts.iter().map(|t| tokenizer::encode(t, MAX_TOKENS)).collect();
    // Pad to a multiple of 16 tokens: calls with the same padded length,
    // from any task, share a batch on the host.
    let longest = ids.iter().map(Vec::len).max().unwrap_or(0);
    let seq = longest.div_ceil(16).max(1) * 16;
    let rows = ids.len() as u64;
    let (mut input_ids, mut mask) = (Vec::new(), Vec::new());
    for t in &ids {
        input_ids.extend(t.iter().map(|&i| i64::from(i)).chain(std::iter::repeat_n(0, seq - t.len())));
        mask.extend((0..seq).map(|i| i64::from(i < t.len())));
    }
    if rows == 0 {
        return Ok(Json(Embeddings { dims: 0, embeddings: Vec::new() }));
    }
    let shape = [rows, seq as u64];
    let outputs = inference::run(
        model,
        &[
            Tensor::i64("input_ids", &shape, &input_ids),
            Tensor::i64("attention_mask", &shape, &mask),
            Tensor::i64("token_type_ids", &shape, &vec![0; input_ids.len()]),
        ],
    )?;
    let hidden = outputs.first().ok_or_else(|| Error::permanent("the model returned no output"))?;
    let dims = *hidden.shape.last().unwrap_or(&0) as usize;
    let values = hidden.to_f32()?;
    let embeddings = (0..ids.len())
        .map(|r| {
            // Mean over the real tokens, then unit length.
            let mut v = vec![0f32; dims];
            for t in 0..ids[r].len() {
                let at = (r * seq + t) * dims;
                v.iter_mut().zip(&values[at..at + dims]).for_each(|(a, b)| *a += b);
            }
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            v.iter_mut().for_each(|x| *x /= norm);
            v
        })
        .collect();
    Ok(Json(Embeddings { dims, embeddings }))
}
