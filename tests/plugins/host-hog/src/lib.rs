//! Hostile: makes the host hold memory outside the guest's own limit, as
//! its input says. Every case must end at the task's host budget (or a
//! cap) instead of growing the host:
//! - `logs N`: N empty `log` records (the log cap counts message bytes,
//!   so only the budget stops these);
//! - `children N SIZE`: N children of `SIZE`-byte inputs, copied from one
//!   reused buffer; reports how many were accepted and the first refusal;
//! - `context N SIZE`: N rounds of setting then deleting one key to a
//!   `SIZE`-byte value; reports `ok` or the first refusal;
//! - `emit SIZE`: returns SIZE bytes (a child with a big output);
//! - `join N SIZE`: submits N children that each `emit SIZE`, then joins
//!   them with a continuation that calls `joined` (`joined` below);
//! - `joined`: reads the joined tasks' outcomes and reports their count.

use taskhost_sdk::flow::{self, Child};
use taskhost_sdk::{Error, Result, context};

fn numbers(rest: &str) -> Result<Vec<usize>> {
    rest.split_whitespace().map(|n| n.parse().map_err(|e| Error::permanent(format!("`{n}`: {e}")))).collect()
}

#[taskhost_sdk::plugin]
fn host_hog(input: String) -> Result<Vec<u8>> {
    let (what, rest) = input.trim().split_once(' ').unwrap_or((input.trim(), ""));
    let n = numbers(rest)?;
    let arg = |i: usize| n.get(i).copied().ok_or_else(|| Error::permanent(format!("`{what}` needs {} numbers", i + 1)));
    match what {
        "logs" => {
            for _ in 0..arg(0)? {
                taskhost_sdk::log::info("");
            }
            Ok(b"logged".to_vec())
        }
        "children" => {
            let buffer = vec![b'x'; arg(1)?];
            let mut accepted = 0;
            for _ in 0..arg(0)? {
                match Child::new("host-hog").input(buffer.as_slice()).submit() {
                    Ok(_) => accepted += 1,
                    Err(e) => return Ok(format!("accepted {accepted}; refused: {e}").into_bytes()),
                }
            }
            Ok(format!("accepted {accepted}").into_bytes())
        }
        "context" => {
            let value = vec![b'v'; arg(1)?];
            for round in 0..arg(0)? {
                if let Err(e) = context::set("k", &value) {
                    return Ok(format!("round {round} refused: {e}").into_bytes());
                }
                context::delete("k");
            }
            Ok(b"ok".to_vec())
        }
        "emit" => Ok(vec![b'o'; arg(0)?]),
        "join" => {
            let mut ids = Vec::new();
            for _ in 0..arg(0)? {
                ids.push(Child::new("host-hog").input(format!("emit {}", arg(1)?)).submit()?);
            }
            let then = flow::join(&ids, Child::new("host-hog").input("joined"))?;
            Ok(then.0.into_bytes())
        }
        "joined" => Ok(format!("joined {}", flow::joined().len()).into_bytes()),
        other => Err(Error::permanent(format!("unknown case `{other}`"))),
    }
}
