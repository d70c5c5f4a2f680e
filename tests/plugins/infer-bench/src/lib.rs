//! Benchmark plugin: calls a BERT-style model (`input_ids`,
//! `attention_mask`, `token_type_ids`) `repeat` times with one prepared
//! batch of `rows` × `seq` tokens, so a task's time is almost all
//! `inference.run`. Input `{"model": "minilm", "rows": 8, "seq": 16,
//! "repeat": 50}`; output the bytes received per call.

use serde::Deserialize;
use taskhost_sdk::inference::{self, Tensor};
use taskhost_sdk::{Json, Result, plugin};

#[derive(Deserialize)]
struct Bench {
    model: String,
    rows: u64,
    seq: u64,
    repeat: u32,
}

#[plugin]
fn infer_bench(Json(b): Json<Bench>) -> Result<String> {
    let shape = [b.rows, b.seq];
    let n = (b.rows * b.seq) as usize;
    // [CLS] tokens… [SEP] in every row; the ids are real vocabulary entries.
    let ids: Vec<i64> = (0..n)
        .map(|i| match i as u64 % b.seq {
            0 => 101,
            p if p == b.seq - 1 => 102,
            p => 2000 + (p as i64 * 37 + i as i64) % 20000,
        })
        .collect();
    let inputs = [
        Tensor::i64("input_ids", &shape, &ids),
        Tensor::i64("attention_mask", &shape, &vec![1; n]),
        Tensor::i64("token_type_ids", &shape, &vec![0; n]),
    ];
    let mut bytes = 0;
    for _ in 0..b.repeat.max(1) {
        bytes = inference::run(&b.model, &inputs)?.iter().map(|t| t.data.len()).sum::<usize>();
    }
    Ok(bytes.to_string())
}
