//! Hostile: floods a stream forever — `log`, `stdout` or `stderr`, as the
//! input says. Ends as `output too large`.

use taskhost_sdk::{Error, Result};

#[taskhost_sdk::plugin]
fn log_flood(stream: String) -> Result<()> {
    let line = "flood ".repeat(170);
    match stream.trim() {
        "log" => loop {
            taskhost_sdk::log::info(&line);
        },
        "stdout" => loop {
            println!("{line}");
        },
        "stderr" => loop {
            eprintln!("{line}");
        },
        other => Err(Error::permanent(format!("unknown stream `{other}`; expected log, stdout or stderr"))),
    }
}
