//! The `taskhost` command-line tool.

mod cli;

/// jemalloc instead of the C library's allocator: the host allocates and
/// frees small buffers on every task (store pages, records, requests)
/// across threads, where glibc's malloc spent about a fifth of the store
/// committer's time (docs/performance.md, "The allocator").
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}
