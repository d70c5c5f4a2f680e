//! Fixture: writes to each stream, for the logs kept with a task. Input
//! `LINES:PAUSE_MS:FAIL_UNTIL`: writes LINES rounds of one `log` record,
//! one stdout line and one stderr line (pausing PAUSE_MS after each, so a
//! follower sees them come), then fails (retryable) while its attempt is
//! below FAIL_UNTIL, else returns `done`.

use taskhost_sdk::{Error, Result, ResultExt, task_info};

#[taskhost_sdk::plugin]
fn chatter(input: String) -> Result<String> {
    let mut parts = input.trim().trim_matches('"').split(':').map(|p| p.parse::<u64>());
    let lines = parts.next().transpose().permanent()?.unwrap_or(1);
    let pause = parts.next().transpose().permanent()?.unwrap_or(0);
    let fail_until = parts.next().transpose().permanent()?.unwrap_or(0);
    let attempt = u64::from(task_info().attempt);
    for i in 1..=lines {
        taskhost_sdk::warn!("attempt {attempt} log {i}");
        println!("attempt {attempt} out {i}");
        eprintln!("attempt {attempt} err {i}");
        if pause > 0 {
            std::thread::sleep(std::time::Duration::from_millis(pause));
        }
    }
    if attempt < fail_until {
        return Err(Error::retryable(format!("attempt {attempt} fails on purpose")));
    }
    Ok("done".into())
}
