//! `strongbox repo …`: init, backup, restore, snapshots, check, forget,
//! prune, stats, wal-push, wal-fetch, wal-list, key.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use strongbox_repo::{
    BackupOptions, ChunkerParams, Id, InitOptions, NoProgress, PruneOptions, Repository, Source, Store,
};

use crate::bar::Bar;
use crate::wal_prefetch::Spool;

/// Segments a prefetcher fetches at once.
const PREFETCH_PARALLEL: usize = 2;

/// Claims the segments after `name` and starts a background `wal-prefetch`
/// for them (best effort: a failure only means direct fetches later).
fn start_prefetch(args: &RepoArgs, location: &str, name: &str, dest: &std::path::Path, segment_size: u64) {
    let Verb::WalFetch { prefetch, archive, .. } = &args.verb else {
        return;
    };
    let spool = Spool::beside(dest);
    let claimed = spool.claim_after(name, segment_size, *prefetch, std::process::id());
    if claimed.is_empty() {
        return;
    }
    let exe = std::env::current_exe();
    let mut c = std::process::Command::new(exe.as_deref().unwrap_or(std::path::Path::new("strongbox")));
    c.args(["repo", "-r", location]);
    if let Some(f) = &args.password_file {
        c.arg("--password-file").arg(f);
    }
    c.args(["wal-prefetch", "--archive", &archive.archive, "--spool"])
        .arg(spool.dir())
        .args(&claimed)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // Its own process group: PostgreSQL's signals to the restore_command's
    // group never reach it, and it outlives this process.
    std::os::unix::process::CommandExt::process_group(&mut c, 0);
    match c.spawn() {
        Ok(child) => spool.reassign(&claimed, child.id()),
        Err(_) => {
            for n in &claimed {
                spool.release(n);
            }
        }
    }
}

#[derive(Args)]
pub struct RepoArgs {
    /// Repository location: a directory, `s3://BUCKET/PREFIX` (endpoint and
    /// credentials from AWS_* variables) or `memory:`.
    #[arg(long, short = 'r', env = "STRONGBOX_REPO", global = true)]
    repo: Option<String>,
    /// Read the password from this file (else STRONGBOX_PASSWORD, else a prompt).
    #[arg(long, env = "STRONGBOX_PASSWORD_FILE", global = true)]
    password_file: Option<PathBuf>,
    /// Print machine-readable JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    verb: Verb,
}

/// Which cluster's WAL archive: one per cluster, since two clusters'
/// segments share names. The server's deployments use `DOMAIN/DEPLOYMENT`.
#[derive(Args)]
struct ArchiveArg {
    #[arg(long, default_value = "default")]
    archive: String,
}

#[derive(Subcommand)]
enum Verb {
    /// Create a repository.
    Init {
        /// Chunk size bounds in bytes, `MIN,AVG,MAX`.
        #[arg(long, value_parser = parse_chunker)]
        chunker: Option<ChunkerParams>,
        /// zstd level for new data (1-19).
        #[arg(long)]
        compression_level: Option<i32>,
        /// Target pack size in MiB.
        #[arg(long)]
        pack_size_mib: Option<u32>,
    },
    /// Back up files (or `-` for stdin) as one snapshot.
    Backup {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Name to record for stdin.
        #[arg(long, default_value = "stdin")]
        stdin_name: String,
        #[arg(long)]
        tag: Vec<String>,
        /// `KEY=VALUE`, e.g. deployment=db12c.
        #[arg(long, value_parser = parse_label)]
        label: Vec<(String, String)>,
    },
    /// Restore a snapshot (`latest`, an id or an id prefix).
    Restore {
        snapshot: String,
        /// Only this file of the snapshot.
        #[arg(long)]
        file: Option<String>,
        /// Directory to restore into.
        #[arg(long, conflicts_with = "stdout")]
        target: Option<PathBuf>,
        /// Write the file (requires --file, or a one-file snapshot) to stdout.
        #[arg(long)]
        stdout: bool,
    },
    /// List snapshots.
    Snapshots,
    /// Verify the repository; exits 1 when anything is damaged.
    Check {
        /// Also download and verify every pack.
        #[arg(long)]
        read_data: bool,
    },
    /// Delete snapshots (their data goes with the next prune).
    Forget {
        ids: Vec<String>,
        /// Keep only the newest N snapshots.
        #[arg(long)]
        keep_last: Option<usize>,
    },
    /// Delete data no snapshot needs; safe while backups run.
    Prune {
        /// Repack packs whose live fraction is below this.
        #[arg(long, default_value_t = 0.5)]
        repack_below: f64,
    },
    /// Sizes and counts.
    Stats,
    /// Archive a PostgreSQL WAL file under its name: for archive_command,
    /// `strongbox repo -r REPO --password-file F wal-push --archive A %p`.
    WalPush {
        path: PathBuf,
        #[command(flatten)]
        archive: ArchiveArg,
    },
    /// Write an archived WAL file to DEST (exit 1 if it is not archived):
    /// for restore_command, `… wal-fetch --archive A %f %p`.
    WalFetch {
        name: String,
        dest: PathBuf,
        #[command(flatten)]
        archive: ArchiveArg,
        /// Also fetch this many following segments in the background, into
        /// a spool beside DEST, for the next calls (see wal_prefetch).
        #[arg(long, default_value_t = 0)]
        prefetch: usize,
    },
    /// Fetch WAL segments into a prefetch spool (started by wal-fetch).
    #[command(hide = true)]
    WalPrefetch {
        names: Vec<String>,
        #[arg(long)]
        spool: PathBuf,
        #[command(flatten)]
        archive: ArchiveArg,
    },
    /// List the archived WAL files.
    WalList {
        #[command(flatten)]
        archive: ArchiveArg,
    },
    /// Copy snapshots (all, or those named), then every WAL file and record,
    /// into another repository (created if there is none), under its own
    /// key; only what it lacks crosses. What a server's `copies` do.
    Copy {
        /// The other repository: a directory or `s3://BUCKET/PREFIX`.
        #[arg(long)]
        to: String,
        /// Its password, from this file (else STRONGBOX_TO_PASSWORD).
        #[arg(long)]
        to_password_file: Option<PathBuf>,
        /// Snapshots to copy (ids or prefixes); none: every one.
        snapshots: Vec<String>,
    },
    /// Manage key slots.
    Key {
        #[command(subcommand)]
        verb: KeyVerb,
    },
}

/// Also `strongbox admin key`, on the server's repository.
#[derive(Subcommand)]
pub enum KeyVerb {
    /// Add a slot; the new password comes from STRONGBOX_NEW_PASSWORD or a prompt.
    Add,
    /// The slots, never a secret.
    List,
    /// Remove a slot (never the last one).
    Remove { id: String },
}

fn parse_chunker(s: &str) -> Result<ChunkerParams, String> {
    let v: Vec<u32> = s
        .split(',')
        .map(|x| x.trim().parse::<u32>())
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    match v.as_slice() {
        [min, avg, max] => Ok(ChunkerParams {
            min: *min,
            avg: *avg,
            max: *max,
        }),
        _ => Err("expected MIN,AVG,MAX in bytes".into()),
    }
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

fn password(args: &RepoArgs, confirm: bool) -> Result<Vec<u8>> {
    if let Some(f) = &args.password_file {
        return password_file(f);
    }
    if let Ok(p) = std::env::var("STRONGBOX_PASSWORD") {
        return Ok(p.into_bytes());
    }
    prompt("repository password", confirm)
}

/// A password kept in a file, without the line end after it.
fn password_file(f: &Path) -> Result<Vec<u8>> {
    let s = std::fs::read_to_string(f).with_context(|| format!("reading password file {}", f.display()))?;
    Ok(s.trim_end_matches(['\r', '\n']).as_bytes().to_vec())
}

fn prompt(what: &str, confirm: bool) -> Result<Vec<u8>> {
    if !std::io::stdin().is_terminal() {
        bail!("no {what}: set STRONGBOX_PASSWORD or --password-file (stdin is not a terminal to prompt on)");
    }
    let p = rpassword::prompt_password(format!("{what}: "))?;
    if confirm && rpassword::prompt_password(format!("{what} again: "))? != p {
        bail!("the passwords do not match");
    }
    Ok(p.into_bytes())
}

fn parse_id(s: &str) -> Result<Id> {
    Id::from_hex(s).with_context(|| format!("{s:?} is not a full 64-digit id"))
}

pub async fn run(args: RepoArgs) -> Result<ExitCode> {
    let location = args
        .repo
        .clone()
        .context("no repository given: pass --repo LOCATION or set STRONGBOX_REPO")?;
    // A prefetched segment is only renamed: no need to open the repository.
    if let Verb::WalFetch {
        name, dest, prefetch, ..
    } = &args.verb
        && *prefetch > 0
        && let Some(size) = Spool::beside(dest).take(name, dest)?
    {
        start_prefetch(&args, &location, name, dest, size);
        return Ok(ExitCode::SUCCESS);
    }
    let store = Store::open(&location)?;
    if let Verb::Init {
        chunker,
        compression_level,
        pack_size_mib,
    } = &args.verb
    {
        let d = InitOptions::default();
        let opts = InitOptions {
            chunker: chunker.unwrap_or(d.chunker),
            compression_level: compression_level.unwrap_or(d.compression_level),
            pack_size: pack_size_mib.map_or(d.pack_size, |m| m.saturating_mul(1 << 20)),
        };
        let repo = Repository::init(store, &password(&args, true)?, opts).await?;
        println!("created repository {} at {location}", repo.config().id);
        return Ok(ExitCode::SUCCESS);
    }
    let repo = Repository::open(store, &password(&args, false)?).await?;
    let json = args.json;
    match &args.verb {
        Verb::Init { .. } => unreachable!("handled above"),
        Verb::Backup {
            paths,
            stdin_name,
            tag,
            label,
        } => backup(&repo, json, paths, stdin_name, tag, label).await,
        Verb::Restore {
            snapshot,
            file,
            target,
            stdout,
        } => restore(&repo, snapshot, file.as_deref(), target.as_deref(), *stdout).await,
        Verb::Snapshots => snapshots(&repo, json).await,
        Verb::Check { read_data } => check(&repo, json, *read_data).await,
        Verb::Forget { ids, keep_last } => forget(&repo, ids, *keep_last).await,
        Verb::Prune { repack_below } => prune(&repo, *repack_below).await,
        Verb::WalPush { path, archive } => wal_push(&repo, &archive.archive, path).await,
        Verb::WalFetch {
            name,
            dest,
            archive,
            prefetch,
        } => {
            let fetched = wal_fetch(&repo, &archive.archive, name, dest).await?;
            if let Some(size) = fetched
                && *prefetch > 0
            {
                start_prefetch(&args, &location, name, dest, size);
            }
            Ok(if fetched.is_some() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Verb::WalPrefetch { names, spool, archive } => wal_prefetch(&repo, &archive.archive, names, spool).await,
        Verb::WalList { archive } => {
            for f in repo.wal_list(&archive.archive).await? {
                println!("{} {} {}", f.name, f.stored_bytes, f.archived_at.unix_timestamp());
            }
            Ok(ExitCode::SUCCESS)
        }
        Verb::Stats => {
            println!("{}", serde_json::to_string_pretty(&repo.stats().await?)?);
            Ok(ExitCode::SUCCESS)
        }
        Verb::Key { verb } => key(&repo, verb).await,
        Verb::Copy {
            to,
            to_password_file,
            snapshots,
        } => copy(&repo, to, to_password_file.as_deref(), snapshots).await,
    }
}

/// `backup PATH… | -`: one snapshot of files or stdin.
async fn backup(
    repo: &Repository,
    json: bool,
    paths: &[std::path::PathBuf],
    stdin_name: &str,
    tag: &[String],
    label: &[(String, String)],
) -> Result<ExitCode> {
    let mut sources = Vec::new();
    for p in paths {
        if p.as_os_str() == "-" {
            sources.push(Source::new(stdin_name, std::io::stdin()));
            continue;
        }
        let f = strongbox_repo::BackupFile::open(p).with_context(|| format!("opening {}", p.display()))?;
        let meta = f.metadata()?;
        if !meta.is_file() {
            bail!("{} is not a regular file", p.display());
        }
        let mut s = Source::new(p.display().to_string().trim_start_matches('/'), f);
        s.size_hint = Some(meta.len());
        s.mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions());
        sources.push(s);
    }
    let bar = Arc::new(Bar::new("backup"));
    let opts = BackupOptions {
        tags: tag.to_vec(),
        labels: label.iter().cloned().collect::<BTreeMap<_, _>>(),
        ..Default::default()
    };
    let snap = repo.backup(sources, opts, bar.clone()).await?;
    bar.finish();
    if json {
        println!(
            "{}",
            serde_json::to_string(&serde_json::json!({"id": snap.id, "totals": snap.totals}))?
        );
    } else {
        let t = snap.totals;
        println!(
            "snapshot {} saved: {} bytes read, {} new chunks of {}, {} bytes stored",
            snap.id, t.logical_bytes, t.new_chunks, t.chunks, t.new_bytes_stored
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `restore SNAPSHOT (--target DIR | --stdout) [--file NAME]`.
async fn restore(
    repo: &Repository,
    snapshot: &str,
    file: Option<&str>,
    target: Option<&std::path::Path>,
    stdout: bool,
) -> Result<ExitCode> {
    let snap = repo.find_snapshot(snapshot).await?;
    if stdout {
        let name = match (file, snap.files.as_slice()) {
            (Some(f), _) => f.to_string(),
            (None, [only]) => only.name.clone(),
            _ => bail!(
                "snapshot {} holds {} files: pick one with --file",
                snap.id,
                snap.files.len()
            ),
        };
        repo.restore_to_writer(&snap, &name, std::io::stdout().lock(), &NoProgress)
            .await?;
        return Ok(ExitCode::SUCCESS);
    }
    let target = target.context("say where to restore: --target DIR or --stdout")?;
    let bar = Bar::new("restore");
    match file {
        Some(f) => {
            std::fs::create_dir_all(target)?;
            let base = std::path::Path::new(f).file_name().context("empty file name")?;
            repo.restore_file(&snap, f, &target.join(base), &bar).await?
        }
        None => repo.restore_all(&snap, target, &bar).await?,
    }
    bar.finish();
    Ok(ExitCode::SUCCESS)
}

/// `snapshots`: a table, or JSON.
async fn snapshots(repo: &Repository, json: bool) -> Result<ExitCode> {
    let snaps = repo.snapshots().await?;
    if json {
        let list: Vec<_> = snaps
            .iter()
            .map(|s| {
                serde_json::json!({
                    "id": s.id, "time": s.time, "hostname": s.hostname, "tags": s.tags,
                    "labels": s.labels, "totals": s.totals,
                    "files": s.files.iter().map(|f| serde_json::json!({"name": f.name, "size": f.size})).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<10} {:<25} {:>14} {:>14}  files / tags",
        "id", "time", "bytes", "new stored"
    );
    for s in snaps {
        let files: Vec<_> = s.files.iter().map(|f| f.name.as_str()).collect();
        println!(
            "{:<10} {:<25} {:>14} {:>14}  {} {}",
            s.id.short(),
            s.time,
            s.totals.logical_bytes,
            s.totals.new_bytes_stored,
            files.join(","),
            s.tags.join(",")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `check [--read-data]`: the repository, base backups' WAL, shipped
/// SQLite generations; exit 1 when anything is wrong.
async fn check(repo: &Repository, json: bool, read_data: bool) -> Result<ExitCode> {
    let report = repo.check(read_data).await?;
    let (bases, mut wal_problems) = strongbox_core::wal_retention::check(repo).await?;
    let (generations, shipped_problems) = strongbox_core::shipping::check_shipped(repo, read_data).await?;
    wal_problems.extend(shipped_problems);
    let ok = report.is_ok() && wal_problems.is_empty();
    if json {
        let mut v = serde_json::to_value(&report)?;
        v["wal_base_backups"] = bases.into();
        v["wal_errors"] = wal_problems.clone().into();
        v["shipped_generations"] = generations.into();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for w in &report.warnings {
            println!("warning: {w}");
        }
        for e in &report.errors {
            println!("error: {e}");
        }
        for s in &report.damaged_snapshots {
            println!("damaged snapshot: {s}");
        }
        for p in &wal_problems {
            println!("error: {p}");
        }
        println!(
            "checked {} snapshots, {} packs ({} read), WAL of {bases} base backups, {generations} shipped \
             SQLite generations: {}",
            report.snapshots,
            report.packs,
            report.packs_read,
            if ok { "no errors" } else { "ERRORS FOUND" }
        );
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// `forget ID… | --keep-last N`.
async fn forget(repo: &Repository, ids: &[String], keep_last: Option<usize>) -> Result<ExitCode> {
    let mut doomed: Vec<Id> = ids.iter().map(|s| parse_id(s)).collect::<Result<_>>()?;
    if let Some(n) = keep_last {
        let snaps = repo.snapshots().await?;
        doomed.extend(snaps.iter().rev().skip(n).map(|s| s.id));
    }
    if doomed.is_empty() {
        bail!("nothing to forget: name snapshot ids or --keep-last N");
    }
    repo.forget(&doomed).await?;
    println!("forgot {} snapshot(s); run `prune` to reclaim space", doomed.len());
    Ok(ExitCode::SUCCESS)
}

/// `prune [--repack-below F]`. WAL is pruned by the server's expire jobs,
/// which know the timelines and what planning recoveries still reads.
async fn prune(repo: &Repository, repack_below: f64) -> Result<ExitCode> {
    if !(0.0..=1.0).contains(&repack_below) {
        bail!("--repack-below is a fraction between 0 and 1");
    }
    let report = repo.prune(&PruneOptions { repack_below }).await?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(ExitCode::SUCCESS)
}

/// `wal-push PATH` (PostgreSQL's `archive_command`).
async fn wal_push(repo: &Repository, archive: &str, path: &std::path::Path) -> Result<ExitCode> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{} names no file", path.display()))?;
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    match repo.wal_push(archive, name, &data).await? {
        strongbox_repo::Pushed::Stored { bytes } => println!("archived {name} ({bytes} bytes stored)"),
        strongbox_repo::Pushed::AlreadyArchived => println!("{name} was already archived, with this content"),
    }
    Ok(ExitCode::SUCCESS)
}

/// `wal-fetch NAME DEST` (PostgreSQL's `restore_command`): the file's
/// size, or `None` (said on stderr) if it is not archived.
async fn wal_fetch(repo: &Repository, archive: &str, name: &str, dest: &std::path::Path) -> Result<Option<u64>> {
    let data = match repo.wal_fetch_for_replay(archive, name).await? {
        Some((data, false)) => data,
        Some((tail, true)) => {
            eprintln!("{name} is not archived whole: restoring the tail streamed of it");
            strongbox_engines::whole_segment(tail)
        }
        None => {
            eprintln!("{name} is not in the WAL archive");
            return Ok(None);
        }
    };
    // Written aside, then renamed: PostgreSQL never sees half a file.
    let partial = dest.with_extension("strongbox-partial");
    std::fs::write(&partial, &data).with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, dest).with_context(|| format!("renaming to {}", dest.display()))?;
    Ok(Some(data.len() as u64))
}

/// `wal-prefetch`: the next segments into the spool, several at a time,
/// until one is not archived or the recovery is over.
async fn wal_prefetch(repo: &Repository, archive: &str, names: &[String], spool: &std::path::Path) -> Result<ExitCode> {
    let spool = Spool::at(spool.to_path_buf());
    use futures::StreamExt;
    let mut fetches = futures::stream::iter(
        names
            .iter()
            .map(|n| async move { (n, repo.wal_fetch(archive, n).await) }),
    )
    .buffered(PREFETCH_PARALLEL);
    while let Some((name, fetched)) = fetches.next().await {
        match fetched {
            Ok(Some(data)) if spool.put(name, &data).unwrap_or(false) => {}
            // Not archived (the end of the archive), failed, or the
            // recovery is over: the rest is left to direct fetches.
            _ => {
                for n in names {
                    spool.release(n);
                }
                break;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `copy --to LOCATION [SNAPSHOT ...]`.
async fn copy(repo: &Repository, to: &str, to_password: Option<&Path>, wanted: &[String]) -> Result<ExitCode> {
    let password = match to_password {
        Some(f) => password_file(f)?,
        None => std::env::var("STRONGBOX_TO_PASSWORD")
            .context("no password for the copy: pass --to-password-file or set STRONGBOX_TO_PASSWORD")?
            .into_bytes(),
    };
    let (copy, created) = Repository::open_or_init(Store::open(to)?, &password, InitOptions::default()).await?;
    if created {
        println!("created repository {} at {to}", copy.config().id);
    }
    let snapshots = match wanted {
        [] => repo.snapshots().await?,
        some => {
            let mut found = Vec::new();
            for spec in some {
                found.push(repo.find_snapshot(spec).await?);
            }
            found
        }
    };
    let (mut copied, mut bytes) = (0, 0);
    for snap in &snapshots {
        let done = repo.copy_snapshot(snap, &copy, Arc::new(NoProgress)).await?;
        if !done.already {
            copied += 1;
            bytes += done.totals.new_bytes_stored;
        }
    }
    let mirrored = repo.mirror_objects(&copy).await?;
    println!(
        "{copied} of {} snapshot(s) copied ({bytes} bytes stored), {} WAL file(s) and record(s) ({} bytes)",
        snapshots.len(),
        mirrored.objects,
        mirrored.bytes
    );
    Ok(ExitCode::SUCCESS)
}

/// `key add | list | remove ID`.
pub async fn key(repo: &Repository, verb: &KeyVerb) -> Result<ExitCode> {
    match verb {
        KeyVerb::Add => {
            let p = match std::env::var("STRONGBOX_NEW_PASSWORD") {
                Ok(p) => p.into_bytes(),
                Err(_) => prompt("new password", true)?,
            };
            anyhow::ensure!(!p.is_empty(), "the password must not be empty");
            println!(
                "added key slot {}: the repository also opens with its password",
                repo.add_key(&p).await?
            );
        }
        KeyVerb::List => {
            for k in repo.list_keys().await? {
                println!("{} {} {}", k.id, k.created, k.hostname);
            }
        }
        KeyVerb::Remove { id } => {
            repo.remove_key(&parse_id(id)?).await?;
            println!("removed key slot {id}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
