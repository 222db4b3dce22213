//! `paxosdb backup FILE`, `paxosdb backup --verify FILE` and `paxosdb restore FILE` (see
//! [`crate::backup`] for what a backup holds and how it is checked).
//!
//! `backup` asks the first endpoint that answers for a backup (admin only), writes the
//! stream to a new `FILE.part`, reads that file back through the backup decoder (every
//! record's CRC, the file's CRC, the end record), syncs it and only then links it as
//! `FILE`: a file named `FILE` is a whole backup. It never overwrites a file (the link
//! fails if `FILE` exists) and never touches a `FILE.part` it did not create.

use super::server::{build_config, ServerArgs};
use super::{client, Cli, ProgressLine};
use crate::backup::{self, Decoder, Summary};
use crate::client::Client;
use crate::error::{Error, Result};
use crate::transfer::blocking;
use clap::Args;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  paxosdb backup nightly.backup                 take a backup from the cluster
  paxosdb backup --verify nightly.backup        check one end to end
  paxosdb --endpoints 10.0.0.5:7001 --user admin --password-file pw backup b.backup")]
pub struct BackupArgs {
    /// The file to write (it must not exist), or with --verify the backup to check.
    pub file: PathBuf,
    /// Check FILE instead of taking a backup: restore it into a scratch directory beside
    /// it (removed afterwards), with every check a restore makes.
    #[arg(long)]
    pub verify: bool,
}

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  paxosdb restore b.backup                      a single-node database in ./paxosdb-data
  paxosdb restore b.backup --id 2 --peers 1=10.0.0.1:7101,2=10.0.0.2:7101,3=10.0.0.3:7101 \\
      --data-dir /var/lib/paxosdb               node 2 of a new 3-node cluster (run it on
                                                every node, then start each with the same
                                                flags: paxosdb server --id 2 --peers ...)")]
pub struct RestoreArgs {
    /// The backup file to seed the new node from.
    pub file: PathBuf,
    /// The new node, as `paxosdb server` takes it: run `paxosdb server` with the same
    /// flags afterwards. Its data directory must be missing or empty.
    #[command(flatten)]
    pub server: ServerArgs,
}

fn mib(bytes: u64) -> String {
    match bytes {
        b if b < 1 << 20 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
    }
}

fn describe(s: &Summary) -> String {
    let h = &s.header;
    format!(
        "node {}'s state at applied index {} ({:?}; members {} in configuration {}), {}",
        h.node,
        h.applied,
        h.machines,
        h.members,
        h.config_id,
        mib(s.bytes)
    )
}

pub async fn run(cli: &Cli, a: &BackupArgs) -> Result<ExitCode> {
    if a.verify {
        let file = a.file.clone();
        let started = Instant::now();
        let s = blocking(move || backup::verify(&file)).await?;
        println!(
            "{}: a valid backup of {}; checked in {:.1}s",
            a.file.display(),
            describe(&s),
            started.elapsed().as_secs_f64()
        );
        return Ok(ExitCode::SUCCESS);
    }
    if a.file.exists() {
        return Err(Error::InvalidInput(format!(
            "{} exists: a backup never overwrites a file; choose another name",
            a.file.display()
        )));
    }
    let c = client(cli)?;
    let started = Instant::now();
    let part = part_path(&a.file);
    // Created new: another run's `.part` is never touched.
    let out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&part)
        .map_err(|e| Error::InvalidInput(format!("cannot create {}: {e}", part.display())))?;
    let res = receive(&c, out).await;
    let s = match res {
        Ok(()) => {
            let p = part.clone();
            blocking(move || check(&p)).await
        }
        Err(e) => Err(e),
    };
    let s = match s {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            return Err(e);
        }
    };
    // A hard link fails if FILE appeared meanwhile: never overwritten.
    let linked = std::fs::hard_link(&part, &a.file);
    let _ = std::fs::remove_file(&part);
    linked.map_err(|e| {
        Error::InvalidInput(format!(
            "cannot name the backup {}: {e} (it was not overwritten)",
            a.file.display()
        ))
    })?;
    sync_parent(&a.file)?;
    let secs = started.elapsed().as_secs_f64();
    println!("wrote {}: {} in {secs:.1}s", a.file.display(), describe(&s));
    Ok(ExitCode::SUCCESS)
}

fn part_path(file: &Path) -> PathBuf {
    let mut p = file.as_os_str().to_owned();
    p.push(".part");
    PathBuf::from(p)
}

/// Writes the backup stream to `f` (synced at the end), showing progress.
async fn receive(c: &Client, mut f: std::fs::File) -> Result<()> {
    let mut stream = c.backup().await?;
    let mut progress = ProgressLine::new();
    let started = Instant::now();
    let mut bytes = 0u64;
    loop {
        let chunk = match stream.message().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(s) => {
                progress.finish();
                return Err(Client::stream_error(&s));
            }
        };
        f.write_all(&chunk.data)?;
        bytes += chunk.data.len() as u64;
        progress.show(|| {
            let secs = started.elapsed().as_secs_f64().max(0.001);
            format!(
                "backup: {} received, {}/s",
                mib(bytes),
                mib((bytes as f64 / secs) as u64)
            )
        });
    }
    progress.finish();
    f.sync_all()?;
    Ok(())
}

/// Reads a received file back through the decoder: every record, the end, the CRCs.
fn check(path: &Path) -> Result<Summary> {
    let f = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(path)?);
    let mut d = Decoder::open(f)?;
    let mut parts = 0;
    while d.next_part()?.is_some() {
        parts += 1;
    }
    Ok(Summary {
        header: d.header().clone(),
        bytes: d.offset(),
        parts,
    })
}

fn sync_parent(file: &Path) -> Result<()> {
    let parent = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    crate::storage::db::sync_dir(parent)
}

pub async fn restore(a: &RestoreArgs) -> Result<ExitCode> {
    let cfg = build_config(&a.server)?;
    let file = a.file.clone();
    let started = Instant::now();
    let c = cfg.clone();
    let r = blocking(move || backup::restore(&file, &c)).await?;
    let ids: Vec<String> = cfg.peers.iter().map(|m| m.id.to_string()).collect();
    println!(
        "restored {} into {} as node {} of a new cluster of nodes {} in {:.1}s; start it \
         with `paxosdb server` and the same flags",
        describe(&r.summary),
        r.data_dir.display(),
        cfg.id,
        ids.join(", "),
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}
