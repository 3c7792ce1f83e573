//! `vdiff`: write the block delta between two disk images. A thin binary: argument parsing,
//! opening, one library call, printing.

use clap::Parser;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use vdiff::{diff, CountingSink, DiffOptions, Error, Image, Stat};
use vmdk_parse::{Disk, ErrorKind, OpenOptions};
use vml_cli::{Exit, Failure};

/// Write the block delta that turns OLD into NEW (guest-visible contents), as a VML delta
/// stream (docs/delta-format.md), to stdout or to -o DELTA.
///
/// OLD and NEW are any disk vmdk-parse opens: a VMDK of any variant or snapshot chain, or a
/// raw image. Blocks of NEW are found anywhere in OLD or earlier in NEW; zero and unallocated
/// ranges are kept as such. Exit codes: 0 ok (and "same" for -q), 1 images differ (-q),
/// 2 usage, 3 corrupt input, 4 missing file, 5 unsupported, 6 I/O error, 7 refused by the path
/// policy (see docs/exit-codes.md).
#[derive(Parser)]
#[command(name = "vdiff", version)]
struct Cli {
    /// OLD then NEW; with --full or --against, NEW alone; with --signature, OLD alone.
    #[arg(required = true, num_args = 1..=2, value_name = "OLD NEW")]
    disks: Vec<PathBuf>,
    /// Write the signature of OLD (block digests, 21 bytes per block) instead of a delta, for
    /// diffing against OLD from another host with --against.
    #[arg(long, conflicts_with_all = ["full", "quiet", "stat", "against"])]
    signature: bool,
    /// Diff NEW against the image a signature file describes (`-` for stdin); the delta
    /// applies to that image. The block size is the signature's.
    #[arg(long, value_name = "SIG", conflicts_with_all = ["full", "quiet"])]
    against: Option<PathBuf>,
    /// A delta from nothing: the whole of NEW, with zero and unallocated ranges kept.
    #[arg(long)]
    full: bool,
    /// Output file (written under a temporary name, renamed when complete); `-` or none for
    /// stdout, which must not be a terminal.
    #[arg(short, long, value_name = "DELTA")]
    output: Option<PathBuf>,
    /// Matching granularity in bytes: a power of two from 4096 to 1048576 (default 4096).
    /// Memory is about 125 bytes per block of the pair at worst.
    #[arg(long, default_value_t = vdiff::diff::DEFAULT_BLOCK_SIZE, value_name = "N")]
    block_size: u32,
    /// Append a trailing index to the delta, so that a delta stored as a file can be read at
    /// random (default: no index).
    #[arg(long, conflicts_with_all = ["quiet", "signature"])]
    index: bool,
    /// zstd level for literal data (default 3).
    #[arg(
        long,
        default_value_t = 3,
        value_name = "L",
        allow_negative_numbers = true
    )]
    level: i32,
    /// Print a JSON summary (schema vdiff-stat/1, docs/vdiff.md) instead of the delta.
    #[arg(long, conflicts_with_all = ["output", "quiet"])]
    stat: bool,
    /// Print nothing; exit 0 when the images read the same, 1 when they differ (like cmp -s).
    #[arg(short, long, conflicts_with_all = ["output", "full"])]
    quiet: bool,
    /// Follow extent and parent paths that leave a disk's folder (default: refuse them).
    #[arg(long)]
    allow_outside: bool,
    /// The folder extent and parent paths may not leave (default: each disk's own folder),
    /// e.g. the VM's folder for a snapshot link in a subfolder naming `../disk.vmdk`.
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
}

fn exit_for(e: &Error) -> Exit {
    match e {
        Error::Disk(d) => match d.kind() {
            ErrorKind::Corrupt => Exit::Corrupt,
            ErrorKind::NotFound => Exit::Missing,
            ErrorKind::Unsupported => Exit::Unsupported,
            ErrorKind::Io => Exit::Io,
            ErrorKind::Refused => Exit::Refused,
            ErrorKind::OutOfRange => Exit::Usage,
        },
        Error::Usage(_) => Exit::Usage,
        Error::Format(_) | Error::Input(_) => Exit::Corrupt,
        Error::Io(_) | Error::Changed(_) => Exit::Io,
    }
}

fn fail(e: Error) -> Failure {
    Failure::new(exit_for(&e), e)
}

fn main() -> ExitCode {
    if let Some(code) = vml_cli::generate::if_asked::<Cli>() {
        return code;
    }
    vml_cli::finish("vdiff", run(Cli::parse()))
}

fn open(path: &Path, opts: &OpenOptions) -> Result<Disk, Failure> {
    Disk::open_with(path, opts).map_err(|e| fail(e.into()))
}

fn run(cli: Cli) -> Result<Exit, Failure> {
    let opts = OpenOptions {
        allow_outside: cli.allow_outside,
        root: cli.root.clone(),
        tolerate_chain_problems: false,
        source: None,
    };
    if cli.signature || cli.against.is_some() {
        return signatures(&cli, &opts);
    }
    let (old, new) = match (cli.full, cli.disks.as_slice()) {
        (true, [new]) => (None, open(new, &opts)?),
        (false, [old, new]) => (Some(open(old, &opts)?), open(new, &opts)?),
        (true, _) => return Err(Failure::new(Exit::Usage, "--full takes NEW alone")),
        (false, _) => {
            return Err(Failure::new(
                Exit::Usage,
                "expected OLD NEW (or --full NEW)",
            ))
        }
    };
    let dopts = DiffOptions {
        block_size: cli.block_size,
        level: cli.level,
        index: cli.index,
    };
    // A snapshot child of OLD is diffed from its own grain tables (diff_disks decides).
    let run_diff = |w: &mut dyn Write| match &old {
        Some(o) => vdiff::diff::diff_disks(o, &new, dopts, w),
        None => diff(None, &new, dopts, w),
    };
    if cli.quiet {
        let old = old.as_ref().map(|d| d as &dyn Image);
        let old = old.ok_or_else(|| Failure::new(Exit::Usage, "-q needs OLD and NEW"))?;
        let same = vdiff::diff::same(old, &new).map_err(fail)?;
        return Ok(if same { Exit::Ok } else { Exit::No });
    }
    if cli.stat {
        let mut count = CountingSink::default();
        let s = run_diff(&mut count).map_err(fail)?;
        let stat = Stat::new(cli.block_size, &s, count.0);
        let mut out = io::stdout().lock();
        return serde_json::to_writer_pretty(&mut out, &stat)
            .map_err(io::Error::from)
            .and_then(|_| writeln!(out))
            .and_then(|_| out.flush())
            .map(|_| Exit::Ok)
            .or_else(|e| vml_cli::output_error(e, "stdout"));
    }
    write_output(cli.output.as_ref(), "a delta", |w| run_diff(w).map(|_| ()))
}

/// Where a stream goes: `-o FILE` (temporary name, renamed when complete) or stdout.
fn write_output(
    output: Option<&PathBuf>,
    what: &str,
    produce: impl FnOnce(&mut dyn Write) -> Result<(), Error>,
) -> Result<Exit, Failure> {
    match output.filter(|o| o.as_os_str() != "-") {
        Some(path) => {
            let dir = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            let io_fail = |e: io::Error| Failure::new(Exit::Io, format!("{}: {e}", path.display()));
            let tmp = tempfile::Builder::new()
                .prefix(".vdiff-")
                .tempfile_in(dir)
                .map_err(io_fail)?;
            let mut w = BufWriter::with_capacity(1 << 20, tmp.as_file());
            produce(&mut w).map_err(|e| match e {
                Error::Io(e) | Error::Format(vdiff::format::Error::Io(e)) => io_fail(e),
                e => fail(e),
            })?;
            w.flush().map_err(io_fail)?;
            drop(w);
            tmp.persist(path).map_err(|e| io_fail(e.error))?;
            Ok(Exit::Ok)
        }
        None => {
            vml_cli::refuse_terminal_stdout(what)?;
            let mut out = BufWriter::with_capacity(1 << 20, io::stdout().lock());
            match produce(&mut out).and_then(|_| out.flush().map_err(Error::Io)) {
                Ok(()) => Ok(Exit::Ok),
                Err(Error::Io(e)) | Err(Error::Format(vdiff::format::Error::Io(e))) => {
                    vml_cli::output_error(e, "stdout")
                }
                Err(e) => Err(fail(e)),
            }
        }
    }
}

fn signatures(cli: &Cli, opts: &OpenOptions) -> Result<Exit, Failure> {
    let [disk] = cli.disks.as_slice() else {
        return Err(Failure::new(
            Exit::Usage,
            "--signature takes OLD alone, --against SIG takes NEW alone",
        ));
    };
    let d = open(disk, opts)?;
    if cli.signature {
        let bs = cli.block_size;
        return write_output(cli.output.as_ref(), "a signature", |w| {
            let s = vdiff::diff::scan(&d, bs, true)?;
            vdiff::signature::write(&s, w)?;
            Ok(())
        });
    }
    let sig_path = cli.against.as_ref().expect("--against given");
    let sig_name = sig_path.display().to_string();
    let sig = if sig_path.as_os_str() == "-" {
        vdiff::signature::read(io::BufReader::new(io::stdin().lock()))
    } else {
        let f = std::fs::File::open(sig_path).map_err(|e| {
            let exit = if e.kind() == io::ErrorKind::NotFound {
                Exit::Missing
            } else {
                Exit::Io
            };
            Failure::new(exit, format!("{sig_name}: {e}"))
        })?;
        vdiff::signature::read(io::BufReader::new(f))
    }
    .map_err(|e| {
        let exit = match e {
            vdiff::format::Error::Io(_) => Exit::Io,
            _ => Exit::Corrupt,
        };
        Failure::new(exit, format!("{sig_name}: {e}"))
    })?;
    let dopts = DiffOptions {
        block_size: sig.block_size,
        level: cli.level,
        index: cli.index,
    };
    if cli.stat {
        let bs = sig.block_size;
        let mut count = CountingSink::default();
        let s = vdiff::diff::diff_against(sig, &d, dopts, &mut count).map_err(fail)?;
        let stat = Stat::new(bs, &s, count.0);
        let mut out = io::stdout().lock();
        return serde_json::to_writer_pretty(&mut out, &stat)
            .map_err(io::Error::from)
            .and_then(|_| writeln!(out))
            .and_then(|_| out.flush())
            .map(|_| Exit::Ok)
            .or_else(|e| vml_cli::output_error(e, "stdout"));
    }
    write_output(cli.output.as_ref(), "a delta", |w| {
        vdiff::diff::diff_against(sig, &d, dopts, w).map(|_| ())
    })
}
