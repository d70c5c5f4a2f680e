//! Example: a three-stage pipeline A→B→C repeated N times, each stage a new
//! durable task created by the one before; C records each round in the
//! flow's context and starts A again until the last round.

use serde::{Deserialize, Serialize};
use taskhost_sdk::{Json, Result, context, flow::Child};

#[derive(Serialize, Deserialize)]
struct Step {
    stage: char,
    round: u32,
    rounds: u32,
    text: String,
}

#[taskhost_sdk::plugin]
fn pipeline(Json(mut s): Json<Step>) -> Result<String> {
    let next = match s.stage {
        'a' => 'b', // A: normalise the text
        'b' => 'c', // B: reverse the word order
        _ => 'a',   // C: record the round, then loop back to A
    };
    match s.stage {
        'a' => s.text = s.text.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase(),
        'b' => s.text = s.text.split(' ').rev().collect::<Vec<_>>().join(" "),
        _ => {
            context::set(&format!("round-{:03}", s.round), &s.text)?;
            s.round += 1;
            if s.round == s.rounds {
                return Ok(context::keys("round-").join(","));
            }
        }
    }
    s.stage = next;
    let id = Child::new("pipeline").json(&s)?.submit()?;
    Ok(format!("stage {} of round {} → {id}", s.stage, s.round))
}
