//! The `strongbox` binary: `serve` (the API and its workers), `repo` (the
//! repository directly), `admin` (set-up) and `client` (the API from a shell).

mod admin;
mod bar;
mod client;
mod config;
mod repo_cmd;
mod serve;
mod server_repo;
mod wal_prefetch;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "strongbox", version, about = "Self-hosted database backup service")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Work with a backup repository directly.
    Repo(repo_cmd::RepoArgs),
    /// Serve the DBCS backup API and run backup jobs.
    Serve(serve::ServeArgs),
    /// Set up identity domains, users and deployments in a data directory.
    Admin(admin::AdminArgs),
    /// Drive a server's API: backups, recoveries, job status.
    Client(client::ClientArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print the manual page (roff), e.g. `strongbox man > strongbox.1`.
    Man,
}

/// Tunes glibc's malloc for the pipeline's 1-2 MiB buffers. Pins the mmap
/// threshold at 4 MiB, above a frame (2 MiB of chunks) and below a pack: by
/// default glibc raises the threshold to the size of the largest block
/// freed (a 16 MiB pack), after which packs come from the heap and fragment
/// it: peak RSS of a 1 GiB backup fell from 80 MB to 49 MB with a pinned
/// threshold, at unchanged speed (README "Memory"). Below the frame size,
/// every frame a restore decompresses was a fresh mapping: 6x the page
/// faults.
fn tune_allocator() {
    // SAFETY: mallopt only sets a malloc tuning parameter; it is called
    // before any other thread exists, with a valid option and value.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        // Fixing the mmap threshold also fixes the trim threshold at its
        // 128 KiB default: each freed 1 MiB frame buffer was handed back to
        // the kernel and faulted in again (1.3 GiB of page faults, 2 s of
        // system time, per 1 GiB restored).
        libc::mallopt(libc::M_TRIM_THRESHOLD, 16 << 20);
        // Each of the many short-lived restore threads otherwise gets its
        // own arena, each keeping up to the trim threshold: restore RSS
        // 67-85 MB with 8+ arenas, 41 MB with 2, at the same speed.
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Log lines go to stderr: by default, for the server, one per request and
/// per job step (`info`), for the other commands only errors; the
/// filter from `STRONGBOX_LOG` (e.g. `debug`, `strongbox::request=warn`);
/// `STRONGBOX_LOG_FORMAT=json` for one JSON object per line.
///
/// Lines are written by a thread of their own through a buffer it flushes
/// whenever no more lines wait: a request then pays for formatting its
/// line, not for a write to stderr (`bench/api_bench.sh`: the static
/// handler lost 30 % of its requests/s with a write per line). Nothing is
/// dropped: a full queue makes loggers wait. Keep the guard until exit:
/// dropping it flushes.
fn logging(serving: bool) -> tracing_appender::non_blocking::WorkerGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_env("STRONGBOX_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(if serving { "info" } else { "error" }));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("strongbox-log")
        .finish(std::io::BufWriter::with_capacity(64 << 10, std::io::stderr()));
    // Colours only for a terminal, not for a file or a log collector.
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if std::env::var("STRONGBOX_LOG_FORMAT").is_ok_and(|f| f == "json") {
        fmt.json().init();
    } else {
        fmt.init();
    }
    guard
}

/// The manual page, from the same definitions as `--help`.
fn manual() -> anyhow::Result<()> {
    let cli = <Cli as clap::CommandFactory>::command();
    clap_mangen::Man::new(cli).render(&mut std::io::stdout().lock())?;
    Ok(())
}

fn main() -> std::process::ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    let _log = logging(matches!(cli.command, Command::Serve(_)));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Repo(args) => repo_cmd::run(args).await,
            Command::Serve(args) => serve::run(args).await.map(|()| std::process::ExitCode::SUCCESS),
            Command::Admin(args) => admin::run(args).await.map(|()| std::process::ExitCode::SUCCESS),
            Command::Client(args) => client::run(args).await,
            Command::Completions { shell } => {
                let mut cli = <Cli as clap::CommandFactory>::command();
                clap_complete::generate(shell, &mut cli, "strongbox", &mut std::io::stdout());
                Ok(std::process::ExitCode::SUCCESS)
            }
            Command::Man => manual().map(|()| std::process::ExitCode::SUCCESS),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
