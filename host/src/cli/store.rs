//! `taskhost store check|repair`: the data store, offline (while no server
//! has it open). `check` changes nothing; `repair` keeps a backup of the
//! file first, then keeps what can be read. Exit codes: 0 healthy (check)
//! or repaired with nothing lost (repair), 1 problems found (check) or
//! something could not be kept (repair), 2 the command could not run (no
//! store, in use, an I/O error; nothing was changed).

use super::{EXIT_USAGE, fail};
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use taskhost::engine::default_data_dir;
use taskhost::store::{self, StoreError};

/// Exit status when `check` found problems or `repair` lost something.
const EXIT_PROBLEMS: u8 = 1;

#[derive(Debug, Subcommand)]
pub(crate) enum StoreCommand {
    /// Check the store file without changing it: redb's integrity check
    /// (every page), every record, and the indexes against the tasks.
    /// Exit 0 healthy, 1 problems found, 2 could not check.
    Check(DataArg),
    /// Repair the store file, keeping a backup copy of it first: rebuild
    /// the indexes, or, if pages are damaged, keep every entry that can be
    /// read. Exit 0 repaired (nothing lost), 1 something could not be kept,
    /// 2 could not repair (the file was left as it was).
    Repair(DataArg),
}

#[derive(Debug, Args)]
pub(crate) struct DataArg {
    /// Data directory (default: $TASKHOST_DATA, else $XDG_DATA_HOME/taskhost,
    /// else ~/.local/share/taskhost).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
}

impl DataArg {
    fn file(&self) -> PathBuf {
        self.data.clone().unwrap_or_else(default_data_dir).join(store::FILE_NAME)
    }
}

pub(crate) async fn store(command: StoreCommand) -> ExitCode {
    let (file, repairing) = match &command {
        StoreCommand::Check(data) => (data.file(), false),
        StoreCommand::Repair(data) => (data.file(), true),
    };
    if !file.exists() {
        return fail(EXIT_USAGE, &format!("there is no store at {} (wrong --data?)", file.display()));
    }
    let work = file.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        if repairing {
            store::check::repair(&work).map(Outcome::Repaired)
        } else {
            store::check::check(&work).map(Outcome::Checked)
        }
    })
    .await;
    match outcome {
        Ok(Ok(Outcome::Checked(report))) => {
            println!("store {}", file.display());
            for note in &report.notes {
                println!("  ok: {note}");
            }
            for problem in &report.problems {
                println!("  PROBLEM: {problem}");
            }
            if report.is_healthy() {
                println!("healthy");
                ExitCode::SUCCESS
            } else {
                println!(
                    "damaged: restore it from a backup, or run `taskhost store repair --data {}` (it keeps a backup first)",
                    data_dir(&file)
                );
                ExitCode::from(EXIT_PROBLEMS)
            }
        }
        Ok(Ok(Outcome::Repaired(report))) => {
            println!("store {}", file.display());
            for action in &report.actions {
                println!("  {action}");
            }
            for lost in &report.lost {
                println!("  LOST: {lost}");
            }
            for problem in &report.after.problems {
                println!("  STILL WRONG: {problem}");
            }
            if report.lost.is_empty() && report.after.is_healthy() {
                println!("repaired: nothing was lost");
                ExitCode::SUCCESS
            } else {
                let backup = report.backup.map(|b| b.display().to_string()).unwrap_or_default();
                println!("repaired with losses; the file as it was is kept at {backup}");
                ExitCode::from(EXIT_PROBLEMS)
            }
        }
        Ok(Err(e)) => fail(EXIT_USAGE, &not_run(&file, repairing, &e)),
        Err(e) => fail(EXIT_USAGE, &format!("the store command failed: {e}")),
    }
}

enum Outcome {
    Checked(store::check::CheckReport),
    Repaired(store::check::RepairReport),
}

fn data_dir(file: &std::path::Path) -> String {
    file.parent().map(|p| p.display().to_string()).unwrap_or_else(|| ".".into())
}

fn not_run(file: &std::path::Path, repairing: bool, e: &StoreError) -> String {
    let verb = if repairing { "repair" } else { "check" };
    match e {
        StoreError::InUse { .. } => e.to_string(),
        _ => format!("cannot {verb} {}: {e} (the file was left as it was)", file.display()),
    }
}
